"""The study's tables (markdown) and plots (PNG), rebuilt from the tidy results table (kd_bundle.results).

    python -m kd_bundle report --results results.parquet [--out DIR] [--strict]

prints the markdown and, with --out, writes DIR/report.md and the PNGs. Student rows are read with the labels of
kd_bundle.grid (Cell.result_fields); every other method (teacher, baselines) is a reference row shown alongside.
Repeated rows of one configuration are averaged.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import polars as pl

from kd_bundle.config import DOMAINS
from kd_bundle.grid import KNOWLEDGE_FORMATS, MULTI_DOMAIN, MULTI_FORMAT, SAMPLING_STRATEGIES, UTILIZATIONS

LABEL_COLUMNS = ["domain", "rq", "method", "model", "knowledge_format", "strategy", "ratio", "utilization"]
METRICS = {"precision": "P", "recall": "R", "coverage": "C"}
REQUIRED_COLUMNS = LABEL_COLUMNS + list(METRICS)
STUDENT = "student"


def markdown_tables(results: pl.DataFrame, *, strict: bool = False) -> str:
    """The study's tables as markdown: references, RQ1 format x utilization, RQ2 metric vs ratio, RQ3 methods.

    Args:
        results: rows in kd_bundle.results.RESULT_SCHEMA (at least REQUIRED_COLUMNS).
        strict: report the strict_* metrics (failed sessions count as 0) instead of the lenient ones.
    """
    cells = _cells(results, strict)
    domains = _domains(cells)
    refs = cells.filter(pl.col("method") != STUDENT)
    students = cells.filter(pl.col("method") == STUDENT)
    kind = "strict" if strict else "lenient"
    lines = [
        "# kd-bundle results",
        "",
        f"{results.height} result rows; domains: {', '.join(domains) or 'none'}; metrics: {kind} precision (P), "
        "recall (R), coverage (C); best student value per column in bold.",
    ]
    if {"n_sessions", "n_failed"} <= set(results.columns) and results.height:
        failed, total = results["n_failed"].sum(), results["n_sessions"].sum()
        lines.append(f"Sessions whose output could not be parsed: {failed} of {total} over all rows.")
    if cells["n_rows"].max() is not None and cells["n_rows"].max() > 1:
        lines.append("Some configurations appear in several rows; their values are means.")
    if results.height == 0:
        lines.append("\nNo results to report.")
    lines += _section("Baselines and teacher", _domain_table(refs, ["label"], ["Method"], domains, bold=False))
    rq1 = students.filter(pl.col("rq") == "rq1").with_columns(_rank("utilization", UTILIZATIONS), _format_rank())
    lines += _section("RQ1: knowledge format x utilization", _domain_table(
        rq1.sort("utilization_rank", "format_rank"), ["utilization", "knowledge_format"], ["Utilization", "Format"],
        domains, refs))
    lines += _rq2_sections(students.filter(pl.col("rq") == "rq2"), domains)
    rq3 = _rq3_frame(students.filter(pl.col("rq") == "rq3"))
    lines += _section("RQ3: knowledge utilization", _domain_table(
        rq3, ["utilization", "train_knowledge", "prompt_knowledge"],
        ["Utilization", "Training knowledge", "Prompt knowledge"], domains, refs))
    return "\n".join(lines).rstrip() + "\n"


def plot_results(results: pl.DataFrame, out_dir: Path, *, strict: bool = False) -> list[Path]:
    """PNG plots like the study's, written to `out_dir`: RQ1 formats side by side (grouped bars) per domain,
    RQ2 metric against ratio per strategy per (domain, format, utilization), RQ3 methods side by side per domain.

    Returns:
        The written files, sorted.
    """
    import matplotlib

    matplotlib.use("Agg")
    cells = _cells(results, strict)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = cells.filter(pl.col("method") != STUDENT)
    students = cells.filter(pl.col("method") == STUDENT)
    written = []
    for domain in _domains(cells):
        mine = students.filter(pl.col("domain") == domain)
        domain_refs = refs.filter(pl.col("domain") == domain)
        rq1 = mine.filter(pl.col("rq") == "rq1")
        if rq1.height:
            written.append(_plot_rq1(rq1, domain_refs, out_dir / f"rq1_{_slug(domain)}.png", domain))
        rq2 = mine.filter((pl.col("rq") == "rq2") & pl.col("strategy").is_in(SAMPLING_STRATEGIES))
        for fmt, utilization in rq2.select("knowledge_format", "utilization").unique().sort(pl.all()).iter_rows():
            path = out_dir / f"rq2_{_slug(domain)}_{_slug(fmt)}_{_slug(utilization)}.png"
            extras = mine.filter(
                (pl.col("rq") == "rq2") & (pl.col("utilization") == utilization)
                & (((pl.col("strategy") == MULTI_DOMAIN) & (pl.col("knowledge_format") == fmt))
                   | (pl.col("strategy") == MULTI_FORMAT))
            )
            written.append(_plot_rq2(rq2, extras, domain_refs, path, domain, fmt, utilization))
        rq3 = _rq3_frame(mine.filter(pl.col("rq") == "rq3"))
        if rq3.height:
            written.append(_plot_rq3(rq3, domain_refs, out_dir / f"rq3_{_slug(domain)}.png", domain))
    return sorted(written)


def read_results(path: Path) -> pl.DataFrame:
    """The results table from a Parquet file named on the command line (the CLI edge; stages pass frames)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        results = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_columns(results, str(path))
    return results


def cli(argv: list[str] | None = None) -> int:
    """`python -m kd_bundle report --results FILE [--out DIR] [--strict]`."""
    parser = argparse.ArgumentParser(prog="python -m kd_bundle report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="results Parquet (kd_bundle.results schema)")
    parser.add_argument("--out", type=Path, help="write report.md and the PNG plots into this folder")
    parser.add_argument("--strict", action="store_true", help="report strict metrics (failed sessions score 0)")
    args = parser.parse_args(argv)
    try:
        results = read_results(args.results)
        markdown = markdown_tables(results, strict=args.strict)
    except (FileNotFoundError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        plots = plot_results(results, args.out, strict=args.strict)
        figures = "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
        (args.out / "report.md").write_text(markdown + ("\n## Plots\n" + figures if plots else ""))
        print(f"report: wrote {args.out / 'report.md'} and {len(plots)} plot(s)", file=sys.stderr)
    print(markdown, end="")
    return 0


# ---- tables ------------------------------------------------------------------------------------------------------


def _cells(results: pl.DataFrame, strict: bool) -> pl.DataFrame:
    """One row per configuration: labels, the three metrics (means over repeats), n_rows and a reference label."""
    _check_columns(results, "results", strict)
    prefix = "strict_" if strict else ""
    return (
        results.with_columns(pl.col("model").fill_null(""), pl.col("knowledge_format").fill_null("none"))
        .group_by(LABEL_COLUMNS, maintain_order=True)
        .agg(*[pl.col(f"{prefix}{m}").mean().alias(m) for m in METRICS], pl.len().alias("n_rows"))
        .with_columns(label=_reference_label())
    )


def _rq2_sections(rq2: pl.DataFrame, domains: list[str]) -> list[str]:
    lines: list[str] = []
    sampled = rq2.filter(pl.col("strategy").is_in(SAMPLING_STRATEGIES))
    sampled = sampled.with_columns(_rank("strategy", SAMPLING_STRATEGIES))
    groups = sampled.select("domain", "knowledge_format", "utilization").unique()
    for domain, fmt, utilization in groups.sort(_domain_order(domains), "knowledge_format", "utilization").iter_rows():
        part = sampled.filter((pl.col("domain") == domain) & (pl.col("knowledge_format") == fmt)
                              & (pl.col("utilization") == utilization))
        ratios = sorted(part["ratio"].unique().to_list())
        values = {(r["strategy"], r["ratio"]): r for r in part.iter_rows(named=True)}
        strategies = part.sort("strategy_rank")["strategy"].unique(maintain_order=True).to_list()
        rows = [[s, symbol] + [_number(values.get((s, x), {}).get(m)) for x in ratios]
                for s in strategies for m, symbol in METRICS.items()]
        lines += _section(f"RQ2: {domain}, {fmt}, {utilization} (metric vs sampling ratio)",
                          _markdown(["Strategy", "Metric"] + [f"{x:g}" for x in ratios], rows), level=3)
    full = rq2.filter(pl.col("strategy").is_in(SAMPLING_STRATEGIES) & (pl.col("ratio") == 1.0)).with_columns(
        setting=pl.lit("one domain, full pool"))
    multi = rq2.filter(pl.col("strategy").is_in([MULTI_DOMAIN, MULTI_FORMAT])).with_columns(setting=pl.col("strategy"))
    if multi.height:
        both = pl.concat([full, multi], how="diagonal_relaxed").with_columns(
            _rank("utilization", UTILIZATIONS), _rank("setting", ("one domain, full pool", MULTI_DOMAIN, MULTI_FORMAT)))
        keys = ["utilization_rank", "setting_rank", "knowledge_format"]
        both = both.group_by("domain", "utilization", "setting", *keys).agg(pl.col(list(METRICS)).mean()).sort(keys)
        lines += _section("RQ2: multi-domain accumulation and multi-format aggregation", _domain_table(
            both, ["utilization", "setting", "knowledge_format"], ["Utilization", "Setting", "Knowledge"], domains),
            level=3)
    return ["", "## RQ2: knowledge quantity"] + lines if lines else []


def _rq3_frame(rq3: pl.DataFrame) -> pl.DataFrame:
    """RQ3 rows with the training and prompt knowledge split out of the 'train|prompt' label."""
    parts = pl.col("knowledge_format").str.split("|")
    single = pl.col("knowledge_format")
    return rq3.with_columns(
        train_knowledge=pl.when(parts.list.len() > 1).then(parts.list.first())
        .when(pl.col("utilization") == "icl").then(pl.lit("-")).otherwise(single),
        prompt_knowledge=pl.when(parts.list.len() > 1).then(parts.list.last())
        .when(pl.col("utilization") == "sft").then(pl.lit("-")).otherwise(single),
    ).with_columns(_rank("utilization", UTILIZATIONS), _rank("train_knowledge", KNOWLEDGE_FORMATS),
                   _rank("prompt_knowledge", KNOWLEDGE_FORMATS)).sort(
        "utilization_rank", "train_knowledge_rank", "prompt_knowledge_rank")


def _domain_table(frame: pl.DataFrame, keys: list[str], headers: list[str], domains: list[str],
                  refs: pl.DataFrame | None = None, bold: bool = True) -> list[str]:
    """Rows = distinct `keys` in frame order, columns = P/R/C per domain; reference rows appended, best in bold."""
    if frame.height == 0:
        return []
    values = {tuple(r[k] for k in keys) + (r["domain"],): r for r in frame.iter_rows(named=True)}
    row_keys = list(dict.fromkeys(tuple(r[k] for k in keys) for r in frame.iter_rows(named=True)))
    best = {(d, m): frame.filter(pl.col("domain") == d)[m].max() if bold else None for d in domains for m in METRICS}
    rows = [[str(v) for v in key] + [_number(values.get(key + (d,), {}).get(m), best[(d, m)])
                                     for d in domains for m in METRICS] for key in row_keys]
    for label in ([] if refs is None else refs["label"].unique(maintain_order=True).to_list()):
        mine = {r["domain"]: r for r in refs.filter(pl.col("label") == label).iter_rows(named=True)}
        rows.append(["reference", label] + [""] * (len(keys) - 2)
                    + [_number(mine.get(d, {}).get(m)) for d in domains for m in METRICS])
    return _markdown(headers + [f"{d} {s}" for d in domains for s in METRICS.values()], rows)


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _section(title: str, table: list[str], level: int = 2) -> list[str]:
    return ["", f"{'#' * level} {title}", "", *table] if table else []


def _number(value: float | None, best: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    return f"**{text}**" if best is not None and value == best else text


def _reference_label() -> pl.Expr:
    knowledge = pl.col("knowledge_format")
    fmt = pl.when(knowledge != "none").then(pl.lit(", ") + knowledge).otherwise(pl.lit(""))
    model = pl.when(pl.col("model") != "").then(pl.lit(" (") + pl.col("model") + pl.lit(")")).otherwise(pl.lit(""))
    return pl.concat_str(pl.col("method"), model, fmt)


def _rank(column: str, order: tuple[str, ...]) -> pl.Expr:
    return pl.col(column).replace_strict(list(order), list(range(len(order))), default=len(order),
                                         return_dtype=pl.Int64).alias(f"{column}_rank")


def _format_rank() -> pl.Expr:
    return _rank("knowledge_format", KNOWLEDGE_FORMATS).alias("format_rank")


def _domains(cells: pl.DataFrame) -> list[str]:
    present = set(cells["domain"].to_list())
    return [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))


def _domain_order(domains: list[str]) -> pl.Expr:
    return pl.col("domain").replace_strict(domains, list(range(len(domains))), return_dtype=pl.Int64)


def _check_columns(results: pl.DataFrame, where: str, strict: bool = False) -> None:
    required = REQUIRED_COLUMNS + ([f"strict_{m}" for m in METRICS] if strict else [])
    missing = [c for c in required if c not in results.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; see kd_bundle.results.RESULT_SCHEMA")


# ---- plots -------------------------------------------------------------------------------------------------------


def _plot_rq1(rq1: pl.DataFrame, refs: pl.DataFrame, path: Path, domain: str) -> Path:
    rq1 = rq1.with_columns(_rank("utilization", UTILIZATIONS), _format_rank())
    formats = rq1.sort("format_rank")["knowledge_format"].unique(maintain_order=True).to_list()
    utilizations = rq1.sort("utilization_rank")["utilization"].unique(maintain_order=True).to_list()
    values = {(r["knowledge_format"], r["utilization"]): r for r in rq1.iter_rows(named=True)}
    fig, axes = _figure(f"RQ1 ({domain}): knowledge format x utilization", width=4.2 * 3)
    width = 0.8 / len(utilizations)
    for ax, metric in zip(axes, METRICS):
        for i, utilization in enumerate(utilizations):
            heights = [_value(values.get((f, utilization), {}).get(metric)) for f in formats]
            ax.bar([x + (i - (len(utilizations) - 1) / 2) * width for x in range(len(formats))], heights, width,
                   label=utilization, color=_color(utilization))
        ax.set_xticks(range(len(formats)), formats)
        _reference_lines(ax, refs, metric)
    return _save(fig, axes, path)


def _plot_rq2(rq2: pl.DataFrame, extras: pl.DataFrame, refs: pl.DataFrame, path: Path, domain: str, fmt: str,
              utilization: str) -> Path:
    part = rq2.filter((pl.col("knowledge_format") == fmt) & (pl.col("utilization") == utilization))
    part = part.with_columns(_rank("strategy", SAMPLING_STRATEGIES)).sort("strategy_rank", "ratio")
    fig, axes = _figure(f"RQ2 ({domain}): {fmt} knowledge, {utilization}: metric vs sampling ratio", width=4.2 * 3)
    for ax, metric in zip(axes, METRICS):
        for strategy in part["strategy"].unique(maintain_order=True).to_list():
            line = part.filter(pl.col("strategy") == strategy)
            ax.plot(line["ratio"].to_list(), line[metric].to_list(), marker="o", label=strategy, color=_color(strategy))
        for i, (row, marker) in enumerate(zip(extras.iter_rows(named=True), "*DPX^v")):  # full pools, nudged right
            ax.plot([1.0 + 0.025 * (i + 1)], [row[metric]], marker=marker, markersize=9, linestyle="none",
                    color="black", label=f"{row['strategy']}: {row['knowledge_format']}")
        ax.set_xlabel("sampling ratio")
        _reference_lines(ax, refs, metric)
    return _save(fig, axes, path)


def _plot_rq3(rq3: pl.DataFrame, refs: pl.DataFrame, path: Path, domain: str) -> Path:
    labels = [f"{r['utilization']}: {r['train_knowledge']} / {r['prompt_knowledge']}"
              for r in rq3.iter_rows(named=True)]
    height = max(3.5, 0.32 * len(labels) + 1.5)
    fig, axes = _figure(f"RQ3 ({domain}): utilization (training / prompt knowledge)", width=4.6 * 3, height=height)
    colors = [_color(u) for u in rq3["utilization"].to_list()]
    for ax, metric in zip(axes, METRICS):
        ax.barh(range(len(labels)), [_value(v) for v in rq3[metric].to_list()], color=colors)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0] else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        _reference_lines(ax, refs, metric, vertical=True)
    from matplotlib.patches import Patch

    legend = [Patch(color=_color(u), label=u) for u in rq3["utilization"].unique(maintain_order=True).to_list()]
    return _save(fig, axes, path, legend)


def _figure(title: str, width: float, height: float = 3.8):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(width, height), constrained_layout=True)
    for ax, metric in zip(axes, METRICS):
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, list(axes)


def _reference_lines(ax, refs: pl.DataFrame, metric: str, vertical: bool = False) -> None:
    for row, style in zip(refs.iter_rows(named=True), ["--", ":", "-.", (0, (5, 1)), (0, (1, 3))]):
        if row[metric] is not None:
            draw = ax.axvline if vertical else ax.axhline
            draw(row[metric], linestyle=style, color="grey", linewidth=1.2, label=row["label"])


def _save(fig, axes, path: Path, extra_handles: list | None = None) -> Path:
    import matplotlib.pyplot as plt

    handles, labels = axes[-1].get_legend_handles_labels()
    extra = extra_handles or []
    unique = dict(zip([h.get_label() for h in extra] + labels, extra + handles))
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=min(len(unique), 5), fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _color(name: str) -> str:
    palette = {"random": "C0", "length": "C1", "diversity": "C2", "difficulty": "C3",
               "icl": "C0", "sft": "C1", "sft+icl": "C2"}
    return palette.get(name, "C7")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _value(metric: float | None) -> float:
    """A missing value draws no bar (NaN), never a bar of height 0."""
    return float("nan") if metric is None else metric
