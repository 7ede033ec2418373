"""The study's per-RQ tables as markdown: references, RQ1 format x utilization, RQ2 metric vs ratio, RQ3 methods.

Rows are configurations (kd_bundle.grid labels via Cell.result_fields; every other method is a reference row).
By default the main metrics are the strict ones (a failed session scores 0) with `n` = sessions scored / sessions
and AICL's lenient metrics beside them, labelled "AICL"; `strict=False` shows the AICL metrics alone (with `n`).
Repeated rows of one configuration (seeds, reruns) are averaged; their session counts are summed.
"""

from __future__ import annotations

import polars as pl

from kd_bundle.config import DOMAINS
from kd_bundle.evaluation.results import CONFIG_COLUMNS as LABEL_COLUMNS
from kd_bundle.grid import KNOWLEDGE_FORMATS, MULTI_DOMAIN, MULTI_FORMAT, SAMPLING_STRATEGIES, UTILIZATIONS

METRICS = {"precision": "P", "recall": "R", "coverage": "C"}
REQUIRED_COLUMNS = LABEL_COLUMNS + list(METRICS)
STUDENT = "student"
NOTHING_SCORED = "nothing scored"


def markdown_tables(results: pl.DataFrame, *, strict: bool = True) -> str:
    """The study's tables as markdown: references, RQ1 format x utilization, RQ2 metric vs ratio, RQ3 methods.

    Args:
        results: rows in kd_bundle.evaluation.results.RESULT_SCHEMA (at least REQUIRED_COLUMNS, and strict_* when strict).
        strict: main metrics strict (failed sessions count 0) with AICL's beside them; False: AICL's alone.
    """
    cells = configurations(results, strict)
    domains = domains_of(cells)
    refs = cells.filter(pl.col("method") != STUDENT)
    students = cells.filter(pl.col("method") == STUDENT)
    kind = ("strict (a failed session scores 0), AICL's lenient metrics (failed sessions left out) beside them "
            "as 'AICL'" if strict else "AICL's lenient (failed sessions left out)")
    lines = [
        "# kd-bundle results",
        "",
        (f"{results.height} result rows; domains: {', '.join(domains) or 'none'}; metrics: {kind} precision (P), "
         "recall (R), coverage (C); n = sessions scored / sessions; best student value per column in bold; "
         f"'-' = no value ({NOTHING_SCORED}: every output failed, or the row is absent)."),
    ]
    if {"n_sessions", "n_failed"} <= set(results.columns) and results.height:
        failed, total = results["n_failed"].sum(), results["n_sessions"].sum()
        lines.append(f"Sessions without a scorable answer (unparsed output, or no bundle found): {failed} of {total} over all rows.")
    if cells["n_rows"].max() is not None and cells["n_rows"].max() > 1:
        lines.append("Some configurations appear in several rows; their values are means.")
    if results.height == 0:
        lines.append("\nNo results to report.")
    lines += _section("Baselines and teacher", _domain_table(refs, ["label"], ["Method"], domains, bold=False))
    rq1 = students.filter(pl.col("rq") == "rq1").with_columns(rank("utilization", UTILIZATIONS), format_rank())
    lines += _section("RQ1: knowledge format x utilization", _domain_table(
        rq1.sort("utilization_rank", "format_rank"), ["utilization", "knowledge_format"], ["Utilization", "Format"],
        domains, refs))
    lines += _rq2_sections(students.filter(pl.col("rq") == "rq2"), domains, strict)
    rq3 = rq3_frame(students.filter(pl.col("rq") == "rq3"))
    lines += _section("RQ3: knowledge utilization", _domain_table(
        rq3, ["utilization", "train_knowledge", "prompt_knowledge"],
        ["Utilization", "Training knowledge", "Prompt knowledge"], domains, refs))
    return "\n".join(lines).rstrip() + "\n"


def configurations(results: pl.DataFrame, strict: bool) -> pl.DataFrame:
    """One row per configuration: labels, the main metrics (means over repeats), the AICL ones as aicl_<m> (when
    strict), n ("scored/sessions"), n_rows and a reference label. Nothing scored: every metric null."""
    _check_columns(results, "results", strict)
    prefix = "strict_" if strict else ""
    counted = {"n_scored", "n_sessions"} <= set(results.columns)
    scored = pl.col("n_scored").sum() > 0 if counted else pl.lit(True)
    aicl = [pl.when(scored).then(pl.col(m).mean()).alias(f"aicl_{m}") for m in METRICS] if strict else []
    n = (pl.col("n_scored").sum().cast(pl.String) + "/" + pl.col("n_sessions").sum().cast(pl.String)) if counted \
        else pl.lit("?")
    return (
        results.with_columns(pl.col("model").fill_null(""), pl.col("knowledge_format").fill_null("none"))
        .group_by(LABEL_COLUMNS, maintain_order=True)
        .agg(*[pl.when(scored).then(pl.col(f"{prefix}{m}").mean()).alias(m) for m in METRICS], *aicl,
             n.alias("n"), pl.len().alias("n_rows"))
        .with_columns(label=_reference_label())
    )


def _shown(strict: bool) -> dict[str, str]:
    """Column -> header suffix of each value a domain table shows per domain."""
    aicl = {f"aicl_{m}": f"AICL {s}" for m, s in METRICS.items()} if strict else {}
    return {**METRICS, "n": "n", **aicl}


def _rq2_sections(rq2: pl.DataFrame, domains: list[str], strict: bool) -> list[str]:
    lines: list[str] = []
    sampled = rq2.filter(pl.col("strategy").is_in(SAMPLING_STRATEGIES))
    sampled = sampled.with_columns(rank("strategy", SAMPLING_STRATEGIES))
    groups = sampled.select("domain", "knowledge_format", "utilization").unique()
    for domain, fmt, utilization in groups.sort(_domain_order(domains), "knowledge_format", "utilization").iter_rows():
        part = sampled.filter((pl.col("domain") == domain) & (pl.col("knowledge_format") == fmt)
                              & (pl.col("utilization") == utilization))
        ratios = sorted(part["ratio"].unique().to_list())
        values = {(r["strategy"], r["ratio"]): r for r in part.iter_rows(named=True)}
        strategies = part.sort("strategy_rank")["strategy"].unique(maintain_order=True).to_list()
        rows = [[s, symbol] + [_cell(values.get((s, x), {}).get(m)) for x in ratios]
                for s in strategies for m, symbol in _shown(strict).items()]
        lines += _section(f"RQ2: {domain}, {fmt}, {utilization} (metric vs sampling ratio)",
                          markdown_lines(["Strategy", "Metric"] + [f"{x:g}" for x in ratios], rows), level=3)
    full = rq2.filter(pl.col("strategy").is_in(SAMPLING_STRATEGIES) & (pl.col("ratio") == 1.0)).with_columns(
        setting=pl.lit("one domain, full pool"))
    multi = rq2.filter(pl.col("strategy").is_in([MULTI_DOMAIN, MULTI_FORMAT])).with_columns(setting=pl.col("strategy"))
    if multi.height:
        both = pl.concat([full, multi], how="diagonal_relaxed").with_columns(
            rank("utilization", UTILIZATIONS), rank("setting", ("one domain, full pool", MULTI_DOMAIN, MULTI_FORMAT)))
        keys = ["utilization_rank", "setting_rank", "knowledge_format"]
        shown = list(_shown(strict))
        both = both.group_by("domain", "utilization", "setting", *keys).agg(pl.col(shown).first()).sort(keys)
        lines += _section("RQ2: multi-domain accumulation and multi-format aggregation", _domain_table(
            both, ["utilization", "setting", "knowledge_format"], ["Utilization", "Setting", "Knowledge"], domains,
            strict=strict), level=3)
    return ["", "## RQ2: knowledge quantity"] + lines if lines else []


def rq3_frame(rq3: pl.DataFrame) -> pl.DataFrame:
    """RQ3 rows with the training and prompt knowledge split out of the 'train|prompt' label."""
    parts = pl.col("knowledge_format").str.split("|")
    single = pl.col("knowledge_format")
    return rq3.with_columns(
        train_knowledge=pl.when(parts.list.len() > 1).then(parts.list.first())
        .when(pl.col("utilization") == "icl").then(pl.lit("-")).otherwise(single),
        prompt_knowledge=pl.when(parts.list.len() > 1).then(parts.list.last())
        .when(pl.col("utilization") == "sft").then(pl.lit("-")).otherwise(single),
    ).with_columns(rank("utilization", UTILIZATIONS), rank("train_knowledge", KNOWLEDGE_FORMATS),
                   rank("prompt_knowledge", KNOWLEDGE_FORMATS)).sort(
        "utilization_rank", "train_knowledge_rank", "prompt_knowledge_rank")


def _domain_table(frame: pl.DataFrame, keys: list[str], headers: list[str], domains: list[str],
                  refs: pl.DataFrame | None = None, bold: bool = True, strict: bool | None = None) -> list[str]:
    """Rows = distinct `keys` in frame order, columns = metrics and n per domain; reference rows appended, the best
    student value of each metric in bold."""
    if frame.height == 0:
        return []
    shown = _shown("aicl_precision" in frame.columns if strict is None else strict)
    values = {tuple(r[k] for k in keys) + (r["domain"],): r for r in frame.iter_rows(named=True)}
    row_keys = list(dict.fromkeys(tuple(r[k] for k in keys) for r in frame.iter_rows(named=True)))
    best = {(d, m): frame.filter(pl.col("domain") == d)[m].max() if bold and m != "n" else None
            for d in domains for m in shown}
    rows = [[str(v) for v in key] + [_cell(values.get(key + (d,), {}).get(m), best[(d, m)])
                                     for d in domains for m in shown] for key in row_keys]
    for label in ([] if refs is None else refs["label"].unique(maintain_order=True).to_list()):
        mine = {r["domain"]: r for r in refs.filter(pl.col("label") == label).iter_rows(named=True)}
        rows.append(["reference", label] + [""] * (len(keys) - 2)
                    + [_cell(mine.get(d, {}).get(m)) for d in domains for m in shown])
    return markdown_lines(headers + [f"{d} {s}" for d in domains for s in shown.values()], rows)


def markdown_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _section(title: str, table: list[str], level: int = 2) -> list[str]:
    return ["", f"{'#' * level} {title}", "", *table] if table else []


def _cell(value: float | str | None, best: float | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = f"{value:.3f}"
    return f"**{text}**" if best is not None and value == best else text


def _reference_label() -> pl.Expr:
    knowledge = pl.col("knowledge_format")
    fmt = pl.when(knowledge != "none").then(pl.lit(", ") + knowledge).otherwise(pl.lit(""))
    model = pl.when(pl.col("model") != "").then(pl.lit(" (") + pl.col("model") + pl.lit(")")).otherwise(pl.lit(""))
    return pl.concat_str(pl.col("method"), model, fmt)


def rank(column: str, order: tuple[str, ...]) -> pl.Expr:
    return pl.col(column).replace_strict(list(order), list(range(len(order))), default=len(order),
                                         return_dtype=pl.Int64).alias(f"{column}_rank")


def format_rank() -> pl.Expr:
    return rank("knowledge_format", KNOWLEDGE_FORMATS).alias("format_rank")


def domains_of(cells: pl.DataFrame) -> list[str]:
    present = set(cells["domain"].to_list())
    return [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))


def _domain_order(domains: list[str]) -> pl.Expr:
    return pl.col("domain").replace_strict(domains, list(range(len(domains))), return_dtype=pl.Int64)


def _check_columns(results: pl.DataFrame, where: str, strict: bool = False) -> None:
    required = REQUIRED_COLUMNS + ([f"strict_{m}" for m in METRICS] if strict else [])
    missing = [c for c in required if c not in results.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; see kd_bundle.evaluation.results.RESULT_SCHEMA")
