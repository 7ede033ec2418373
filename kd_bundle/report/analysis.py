"""The study's analyses as pure functions over the results table (kd_bundle.evaluation.results.RESULT_SCHEMA) -> frames.

    confidence          every configuration's metrics with 95% bootstrap intervals, and paired verdicts against
                        the zero-shot student, the zero-shot teacher and the best positional reference of its
                        domain (kd_bundle.report.bootstrap)
    factor_impact       share of the variation explained by knowledge format, quantity and utilization
    knowledge_quantity  what a sampling ratio actually yields (the study's Figure 3)
    alignment_gains     relative gain of SFT+ICL over SFT for every training x prompt format pair (Figure 13)
    knowledge_summary   per format: items produced, failed sessions, truncated answers, feedback rounds, cost
    cost_table          teacher vs distilled student per 1,000 sessions, one-off costs, break-even session count

Rendering lives in kd_bundle.report.document, plots in kd_bundle.report.plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from kd_bundle.evaluation.baselines import POSITIONAL_METHODS
from kd_bundle.evaluation.results import CONFIG_COLUMNS, conform
from kd_bundle.grid import MULTI_DOMAIN, MULTI_FORMAT, SAMPLING_STRATEGIES
from kd_bundle.report import bootstrap

FACTORS = ["format", "quantity", "utilization"]
QUANTITIES = ["train_sessions", "pattern_lines", "rule_count", "thought_count", "knowledge_tokens"]
STUDENT, TEACHER = "student", "teacher"
POSITIONAL = set(POSITIONAL_METHODS)
PER = 1000  # the cost table's unit: this many sessions


def confidence(results: pl.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pl.DataFrame:
    """One row per configuration (seeds pooled): every metric with `_lo`/`_hi`, n_rows, n_scored, n_sessions, and
    per metric `vs_zero_shot_<m>` / `vs_teacher_<m>` / `vs_positional_<m>`: '+', '-' (paired interval above / below
    0), '=' or ''; `positional_<m>` names the positional reference compared with, and `beats_positional` says
    whether an LLM row is above it ('+') on at least one strict metric (null for the other rows).

    The zero-shot student is the domain's row with method "student", knowledge_format and utilization "none"; the
    teacher is its row with method "teacher" and knowledge_format "none"; the best positional reference of a metric
    is the domain's positional row (POSITIONAL_METHODS: no title read) with the highest value of that metric. Rows
    without per-session values get the mean of their metrics and no interval.
    """
    results = _labelled(results)
    groups = bootstrap.pooled_groups(results, CONFIG_COLUMNS)
    arrays = [bootstrap.session_arrays(rows) for _, rows in groups]
    records = []
    for (labels, rows), arr in zip(groups, arrays):
        record: dict[str, Any] = {**labels, "n_rows": len(rows), "n_scored": sum(r["n_scored"] for r in rows),
                                  "n_sessions": sum(r["n_sessions"] for r in rows)}
        if arr is None:
            record.update({m: _mean([r[m] for r in rows]) for m in bootstrap.METRIC_NAMES})
        else:
            record.update(bootstrap.interval(arr[1], n_boot, level, seed))
        records.append(record)
    anchors: dict[tuple[str, str], tuple[str, Any]] = {}  # (domain, kind) -> (label, arrays)
    for (labels, _), arr in zip(groups, arrays):
        kind = _anchor_kind(labels)
        if kind and arr is not None:
            anchors.setdefault((labels["domain"], kind), (labels["method"], arr))
    best = _best_positional(groups, arrays, records)
    for (labels, _), arr, record in zip(groups, arrays, records):
        for kind in ("zero_shot", "teacher", "positional"):
            for m in bootstrap.METRIC_NAMES:
                name, anchor = (best.get((labels["domain"], m)) if kind == "positional"
                                else anchors.get((labels["domain"], kind))) or (None, None)
                is_self = _anchor_kind(labels) == kind if kind != "positional" else labels["method"] in POSITIONAL
                paired = arr is not None and anchor is not None and not is_self
                diff = bootstrap.paired_difference(arr, anchor, n_boot, level, seed) if paired else {}
                record[f"vs_{kind}_{m}"] = bootstrap.verdict(diff, m)
                if kind == "positional":
                    record[f"positional_{m}"] = name
        strict = [record[f"vs_positional_strict_{m}"] for m in ("precision", "recall", "coverage")]
        llm = labels["method"] in (STUDENT, TEACHER)
        record["beats_positional"] = ("+" in strict) if llm and any(strict) else None
    return pl.DataFrame(records, infer_schema_length=None)


def _best_positional(groups: list, arrays: list,
                     records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, Any]]:
    """(domain, metric) -> (method, per-session arrays) of the positional reference with the highest value."""
    best: dict[tuple[str, str], tuple[float, str, Any]] = {}
    for (labels, _), arr, record in zip(groups, arrays, records):
        if labels["method"] not in POSITIONAL or arr is None:
            continue
        for m in bootstrap.METRIC_NAMES:
            value = record.get(m)
            key = (labels["domain"], m)
            if value is not None and (key not in best or value > best[key][0]):
                best[key] = (value, labels["method"], arr)
    return {key: (name, arr) for key, (_, name, arr) in best.items()}


def factor_impact(results: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per domain and "overall": each factor's share (%) of the sum of squares the factors explain, and R^2.

    Model: the metric of every student configuration of RQ1-RQ3 (seeds averaged, a configuration repeated across
    RQs counted once) ~ format + quantity + utilization, all categorical, main effects only ("overall" adds the
    domain as a nuisance factor that gets no share). A factor's sum of squares is Type II: how much the residual
    sum of squares grows when that factor alone is dropped from the full model. Type II does not depend on the
    order of the factors, and the grid is unbalanced (RQ2 varies quantity for some formats only), where one-way
    level-mean spreads would credit a factor with variation that belongs to another. Levels: format =
    knowledge_format; quantity = "strategy@ratio" ("full" at ratio 1, or "multi-domain"); utilization.
    """
    frame = _factor_frame(results, metric)
    out = []
    for domain in [*frame["domain"].unique(maintain_order=True).to_list(), "overall"]:
        part = frame if domain == "overall" else frame.filter(pl.col("domain") == domain)
        factors = FACTORS + (["domain"] if domain == "overall" else [])
        shares, r2 = _type2_shares(part, factors, "value")
        out.append({"domain": domain, "metric": metric, "n_configurations": part.height, "r2": r2,
                    **{f"{f}_share": shares.get(f) for f in FACTORS}})
    schema = {"domain": pl.String, "metric": pl.String, "n_configurations": pl.Int64, "r2": pl.Float64,
              **{f"{f}_share": pl.Float64 for f in FACTORS}}
    return pl.DataFrame(out, schema=schema) if frame.height else pl.DataFrame(schema=schema)


def knowledge_quantity(results: pl.DataFrame) -> pl.DataFrame:
    """Per (domain, knowledge_format, strategy, ratio) of the RQ2 sampling rows: QUANTITIES of the pool used."""
    rows = _labelled(results).filter((pl.col("method") == STUDENT) & pl.col("strategy").is_in(SAMPLING_STRATEGIES)
                                     & pl.col("train_sessions").is_not_null())
    return (rows.group_by("domain", "knowledge_format", "strategy", "ratio", maintain_order=True)
            .agg(pl.col(QUANTITIES).max()).sort("domain", "knowledge_format", "strategy", "ratio"))


def alignment_gains(results: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per domain, training format T and prompt format P of RQ3: sft = the metric of SFT on T, sft_icl = that of
    SFT+ICL on (T, P), gain = (sft_icl - sft) / sft (null when sft is 0 or missing), aligned = T == P."""
    rq3 = _means(_labelled(results).filter((pl.col("method") == STUDENT) & (pl.col("rq") == "rq3")), metric)
    sft = {(r["domain"], r["knowledge_format"]): r["value"]
           for r in rq3.filter(pl.col("utilization") == "sft").iter_rows(named=True)}
    out = []
    for r in rq3.filter(pl.col("utilization") == "sft+icl").iter_rows(named=True):
        train, _, prompt = r["knowledge_format"].partition("|")
        prompt = prompt or train
        base = sft.get((r["domain"], train))
        gain = (r["value"] - base) / base if base and r["value"] is not None else None
        out.append({"domain": r["domain"], "train_format": train, "prompt_format": prompt, "aligned": train == prompt,
                    "sft": base, "sft_icl": r["value"], "gain": gain})
    schema = {"domain": pl.String, "train_format": pl.String, "prompt_format": pl.String, "aligned": pl.Boolean,
              "sft": pl.Float64, "sft_icl": pl.Float64, "gain": pl.Float64}
    return pl.DataFrame(out, schema=schema)


def knowledge_summary(results: pl.DataFrame) -> pl.DataFrame:
    """Per domain and single knowledge format on its full pool: what extraction produced and cost. Read from the
    rows that used that pool alone (strategy "all" or ratio 1); null where no such row carries the columns."""
    rows = _labelled(results).filter(
        pl.col("knowledge_format").is_in(["raw", "patterns", "rules", "thoughts"])
        & ((pl.col("strategy") == "all") | (pl.col("ratio") >= 1.0)) & pl.col("train_sessions").is_not_null())
    items = (pl.when(pl.col("knowledge_format") == "patterns").then(pl.col("pattern_lines"))
             .when(pl.col("knowledge_format") == "rules").then(pl.col("rule_count"))
             .when(pl.col("knowledge_format") == "thoughts").then(pl.col("thought_count"))
             .otherwise(pl.col("train_sessions")))
    columns = ["train_sessions", "teacher_sessions", "items", "knowledge_tokens", "knowledge_failed",
               "knowledge_truncated", "feedback_rounds", "extraction_tokens", "extraction_cost", "extraction_seconds"]
    return (rows.with_columns(items=items).group_by("domain", "knowledge_format", maintain_order=True)
            .agg(pl.col(columns).first()).sort("domain", "knowledge_format"))


def training_table(results: pl.DataFrame) -> pl.DataFrame:
    """One row per adapter (kd_bundle.report.curves.adapter_rows): its pool, examples, steps run, the step kept on
    the validation split (0 = the base was never beaten) and the validation strict precision and loss there
    against the base's."""
    from kd_bundle.report.curves import adapter_rows

    rows = adapter_rows(results)

    def first(column: str) -> pl.Expr:
        return pl.when(pl.col(column).list.len() > 0).then(pl.col(column).list.first())
    return rows.with_columns(base_valid_loss=first("valid_losses"), base_valid_precision=first("valid_precisions"),
                             tokens_per_second=pl.col("train_tokens") / pl.col("train_seconds")
                             ).select("domain", "knowledge_format", "utilization", "strategy", "ratio",
                                      "train_sessions", "train_examples", "train_steps", "best_step",
                                      "base_valid_precision", "valid_strict_precision", "base_valid_loss",
                                      "valid_loss", "train_seconds", "tokens_per_second")


def cost_table(results: pl.DataFrame) -> pl.DataFrame:
    """Per row with measured costs (teacher rows, student rows on full pools), per 1,000 sessions: tokens,
    seconds, money; one-off: extraction tokens / money / seconds and training seconds; and break-even sessions
    against the domain's zero-shot teacher: one-off teacher tokens / teacher tokens saved per session
    (`break_even_tokens`) and one-off seconds / seconds saved per session (`break_even_seconds`; null when the
    student is not faster). Student tokens are its own prompt + new tokens; they cost no teacher money."""
    rows = _labelled(results).filter(
        ((pl.col("method") == TEACHER) | ((pl.col("method") == STUDENT) & (pl.col("strategy") == "all")))
        & pl.col("n_sessions").gt(0))
    keys = [c for c in CONFIG_COLUMNS if c != "rq"]
    rows = rows.group_by(keys, maintain_order=True).agg(pl.all().exclude(keys).first())
    per = pl.lit(PER) / pl.col("n_sessions")
    student = pl.col("method") == STUDENT
    student_tokens = pl.col("inference_prompt_tokens") + pl.col("inference_new_tokens")
    table = rows.with_columns(
        tokens_per_1k=pl.when(student).then(student_tokens).otherwise(pl.col("teacher_tokens")) * per,
        seconds_per_1k=pl.col("wall_seconds") * per,
        money_per_1k=pl.when(student).then(pl.when(student_tokens.is_not_null()).then(pl.lit(0.0)))
        .otherwise(pl.col("teacher_cost")) * per,
        one_off_tokens=pl.col("extraction_tokens"),
        one_off_money=pl.col("extraction_cost"),
        one_off_seconds=pl.col("extraction_seconds") + pl.col("train_seconds"),
    )
    teacher = (table.filter((pl.col("method") == TEACHER) & (pl.col("knowledge_format") == "none"))
               .group_by("domain").agg(teacher_tokens_per_1k=pl.col("tokens_per_1k").first(),
                                       teacher_seconds_per_1k=pl.col("seconds_per_1k").first()))
    spent_tokens = pl.when(student).then(0).otherwise(pl.col("tokens_per_1k") / PER)  # student tokens are not teacher's
    saved_tokens = pl.col("teacher_tokens_per_1k") / PER - spent_tokens
    saved_seconds = (pl.col("teacher_seconds_per_1k") - pl.col("seconds_per_1k")) / PER
    table = table.join(teacher, on="domain", how="left").with_columns(
        break_even_tokens=pl.when(saved_tokens > 0).then((pl.col("one_off_tokens") / saved_tokens).ceil())
        .cast(pl.Int64),
        break_even_seconds=pl.when(saved_seconds > 0).then((pl.col("one_off_seconds") / saved_seconds).ceil())
        .cast(pl.Int64),
    )
    measured = (pl.col("seconds_per_1k").is_not_null() | (pl.col("tokens_per_1k").fill_null(0) > 0)
                | (pl.col("one_off_tokens").fill_null(0) > 0) | (pl.col("train_seconds").fill_null(0) > 0))
    return table.filter(measured).select(keys + ["n_sessions", "tokens_per_1k", "seconds_per_1k", "money_per_1k",
                                          "one_off_tokens", "one_off_money", "one_off_seconds", "train_seconds",
                                          "break_even_tokens", "break_even_seconds"])


# ---- helpers -----------------------------------------------------------------------------------------------------


def _labelled(results: pl.DataFrame) -> pl.DataFrame:
    return conform(results).with_columns(pl.col("model").fill_null(""), pl.col("knowledge_format").fill_null("none"))


def _anchor_kind(labels: dict[str, Any]) -> str | None:
    if labels["method"] == STUDENT and labels["knowledge_format"] == "none" and labels["utilization"] == "none":
        return "zero_shot"
    if labels["method"] == TEACHER and labels["knowledge_format"] == "none":
        return "teacher"
    return None


def _means(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """One value per configuration ignoring the RQ (RQ2 at ratio 1 repeats RQ1's cell) and the seeds."""
    keys = [c for c in CONFIG_COLUMNS if c != "rq"]
    return frame.group_by(keys, maintain_order=True).agg(value=pl.col(metric).mean())


def _factor_frame(results: pl.DataFrame, metric: str) -> pl.DataFrame:
    students = _labelled(results).filter((pl.col("method") == STUDENT) & pl.col("rq").is_in(["rq1", "rq2", "rq3"])
                                         & (pl.col("utilization") != "none"))
    quantity = (pl.when(pl.col("strategy") == MULTI_DOMAIN).then(pl.lit(MULTI_DOMAIN))
                .when((pl.col("ratio") >= 1.0) | pl.col("strategy").is_in(["all", MULTI_FORMAT])).then(pl.lit("full"))
                .otherwise(pl.col("strategy") + pl.lit("@") + pl.col("ratio").cast(pl.String)))
    return (_means(students, metric).filter(pl.col("value").is_not_null())
            .with_columns(format=pl.col("knowledge_format"), quantity=quantity))


def _type2_shares(frame: pl.DataFrame, factors: list[str], target: str) -> tuple[dict[str, float | None], float | None]:
    y = frame[target].to_numpy().astype(float)
    if y.size < 2 or np.allclose(y, y.mean()):
        return {}, None
    full = _rss(frame, factors, y)
    total = float(((y - y.mean()) ** 2).sum())
    explained = {f: max(_rss(frame, [g for g in factors if g != f], y) - full, 0.0) for f in FACTORS}
    denominator = sum(explained.values())
    shares = {f: 100.0 * v / denominator for f, v in explained.items()} if denominator > 0 else {}
    return shares, 1.0 - full / total


def _rss(frame: pl.DataFrame, factors: list[str], y: np.ndarray) -> float:
    """Residual sum of squares of least squares on an intercept plus one dummy per non-first level of each factor."""
    columns = [np.ones(len(y))]
    for f in factors:
        levels = frame[f].to_list()
        columns += [np.array([v == level for v in levels], dtype=float) for level in sorted(set(levels))[1:]]
    design = np.column_stack(columns)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(((y - design @ coef) ** 2).sum())


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
