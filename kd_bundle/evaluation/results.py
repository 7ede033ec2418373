"""One tidy results row per scored grid cell: every table and plot is built from these rows."""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import BaseModel

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "domain": pl.String,
    "rq": pl.String,  # "baseline", "rq1", "rq2", "rq3"
    "method": pl.String,  # "pattern-baseline", "category-baseline", "teacher", "student"
    "knowledge_format": pl.String,  # "none", "raw", "patterns", "rules", "thoughts", or "+"-joined for aggregation
    "strategy": pl.String,  # sampling strategy: "all", "random", "length", "diversity", "difficulty"
    "ratio": pl.Float64,  # sampling ratio of the training knowledge pool
    "utilization": pl.String,  # "none", "icl", "sft", "sft+icl"
    "model": pl.String,
    "precision": pl.Float64,
    "recall": pl.Float64,
    "coverage": pl.Float64,
    "strict_precision": pl.Float64,
    "strict_recall": pl.Float64,
    "strict_coverage": pl.Float64,
    "n_sessions": pl.Int64,
    "n_scored": pl.Int64,
    "n_failed": pl.Int64,
    "teacher_tokens": pl.Int64,  # teacher inference: prompt + completion tokens behind this row's predictions
    "wall_seconds": pl.Float64,  # inference seconds behind the predictions (student generation or teacher latency)
    "predictions_sha256": pl.String,
    # what the predictions were made with, so a row can be applied again (python -m kd_bundle generate --student best:)
    "adapter_sha256": pl.String,  # the stored adapter folder ("adapter" kind); "" = no adapter
    "knowledge_sha256": pl.String,  # "+"-joined kind:sha256 of the pools the prompt retrieved from; "" = none
    # costs; null = not measured (baselines, artifacts older than the measurement)
    "inference_prompt_tokens": pl.Int64,  # summed over sessions
    "inference_new_tokens": pl.Int64,
    "train_seconds": pl.Float64,  # of the adapter the row used; 0 for ICL and the teacher
    "train_tokens": pl.Int64,
    "train_examples": pl.Int64,  # SFT examples the adapter trained on (its training sessions that fit the grammar)
    "train_steps": pl.Int64,  # optimizer steps it ran (early stopping may end a run before its epochs)
    "best_step": pl.Int64,  # the step whose weights were kept by validation (0 = the base; null = no validation)
    "valid_loss": pl.Float64,  # answer loss on the validation sessions at best_step
    "valid_strict_precision": pl.Float64,  # strict precision of the decoded validation answers at best_step
    "teacher_cost": pl.Float64,  # money of the teacher's inference, where a price is configured
    "extraction_tokens": pl.Int64,  # teacher tokens that produced the knowledge the row used (rules, thoughts)
    "extraction_cost": pl.Float64,
    "extraction_seconds": pl.Float64,  # summed request latency
    # knowledge quantity in the pool the row used (0 where the format is absent)
    "train_sessions": pl.Int64,  # training sessions of the knowledge pool the row drew on (raw, patterns, SFT)
    "teacher_sessions": pl.Int64,  # pool sessions the teacher distilled (rules, thoughts); 0 without them
    "pattern_lines": pl.Int64,
    "rule_count": pl.Int64,  # rule lines over the sessions' rule sets
    "thought_count": pl.Int64,
    "knowledge_tokens": pl.Int64,  # word-and-punctuation tokens of every knowledge text (model-independent)
    "knowledge_failed": pl.Int64,  # training sessions whose extraction failed
    "knowledge_truncated": pl.Int64,  # teacher answers cut off at max_tokens
    "feedback_rounds": pl.Int64,  # rule self-reflection feedback turns used
    "sampling_seed": pl.Int64,
    "training_seed": pl.Int64,
    # one entry per session scored against, in session_ids order (kd_bundle.evaluation.metrics.session_lists)
    "session_ids": pl.List(pl.Int64),
    "session_scored": pl.List(pl.Boolean),  # in AICL's evaluated set S
    "session_precision": pl.List(pl.Float64),  # 0 unless scored
    "session_recall": pl.List(pl.Float64),  # AICL recall, 0 unless scored
    "session_hits": pl.List(pl.Int64),
    "session_coverage_sum": pl.List(pl.Float64),
    "session_strict_recall": pl.List(pl.Float64),
    "session_strict_coverage": pl.List(pl.Float64),
    # the adapter's curves (kd_bundle.student.validation): train loss per step, validation loss at valid_steps
    "train_losses": pl.List(pl.Float64),
    "valid_steps": pl.List(pl.Int64),
    "valid_losses": pl.List(pl.Float64),
    "valid_precisions": pl.List(pl.Float64),  # decoded strict precision at valid_steps (empty: selection by loss)
}
TIMING_COLUMNS = ["wall_seconds", "train_seconds", "extraction_seconds"]  # clocks: differ between equal runs
COST_COLUMNS = ["inference_prompt_tokens", "inference_new_tokens", "train_seconds", "train_tokens", "teacher_cost",
                "extraction_tokens", "extraction_cost", "extraction_seconds"]
TRAINING_COLUMNS = ["train_examples", "train_steps", "best_step", "valid_loss", "valid_strict_precision"]
CURVE_COLUMNS = ["train_losses", "valid_steps", "valid_losses", "valid_precisions"]
QUANTITY_COLUMNS = ["train_sessions", "teacher_sessions", "pattern_lines", "rule_count", "thought_count", "knowledge_tokens",
                    "knowledge_failed", "knowledge_truncated", "feedback_rounds"]
SESSION_COLUMNS = ["session_ids", "session_scored", "session_precision", "session_recall", "session_hits",
                   "session_coverage_sum", "session_strict_recall", "session_strict_coverage"]
PROVENANCE_COLUMNS = ["adapter_sha256", "knowledge_sha256"]  # null in a table written before they existed
OPTIONAL_COLUMNS = (COST_COLUMNS + TRAINING_COLUMNS + QUANTITY_COLUMNS + ["sampling_seed", "training_seed"]
                    + SESSION_COLUMNS + CURVE_COLUMNS + PROVENANCE_COLUMNS)
METRIC_COLUMNS = ["precision", "recall", "coverage", "strict_precision", "strict_recall", "strict_coverage"]
# the labels that make one configuration: rows equal on these are repeats of it (seeds, reruns)
CONFIG_COLUMNS = ["domain", "rq", "method", "model", "knowledge_format", "strategy", "ratio", "utilization"]

_DEFAULTS: dict[str, Any] = {
    "knowledge_format": "none",
    "strategy": "all",
    "ratio": 1.0,
    "utilization": "none",
    "model": "",
    "teacher_tokens": 0,
    "wall_seconds": None,  # not measured (0 would read as free)
    "predictions_sha256": "",
    **{c: None for c in OPTIONAL_COLUMNS},
    **dict.fromkeys(PROVENANCE_COLUMNS, ""),  # known to be none unless the scoring stage says otherwise
}


def result_row(**fields: Any) -> pl.DataFrame:
    """A one-row results frame; unknown keys are an error, missing optional keys take _DEFAULTS."""
    unknown = set(fields) - set(RESULT_SCHEMA)
    if unknown:
        raise ValueError(f"result_row: unknown field(s) {sorted(unknown)}; expected {list(RESULT_SCHEMA)}")
    row = {**_DEFAULTS, **fields}
    missing = [c for c in RESULT_SCHEMA if c not in row]
    if missing:
        raise ValueError(f"result_row: missing field(s) {missing}")
    return pl.DataFrame([row], schema=RESULT_SCHEMA)


def combine_results(frames: list[pl.DataFrame]) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    return pl.concat([f.select(list(RESULT_SCHEMA)) for f in frames], how="vertical")


class CellLabels(BaseModel, frozen=True):
    """What a results row is about (everything but the scores)."""

    domain: str
    rq: str = "baseline"
    method: str
    knowledge_format: str = "none"
    strategy: str = "all"
    ratio: float = 1.0
    utilization: str = "none"
    model: str = ""
    teacher_tokens: int = 0
    sampling_seed: int | None = None
    training_seed: int | None = None


def scored_row(labels: CellLabels, scores: dict[str, Any], predictions_sha256: str = "",
               extra: dict[str, Any] | None = None) -> pl.DataFrame:
    """A results row from labels, a metrics dict (extra metric keys are ignored) and `extra` columns (costs,
    quantities, per-session lists); an `extra` key outside RESULT_SCHEMA is an error."""
    metrics = {k: v for k, v in scores.items() if k in RESULT_SCHEMA}
    return result_row(**labels.model_dump(), **metrics, **(extra or {}), predictions_sha256=predictions_sha256)


def knowledge_provenance(pools: list[tuple[str, str]]) -> str:
    """The `knowledge_sha256` cell: (artifact kind, sha256) of each pool a prompt retrieved from, in prompt order."""
    return "+".join(f"{kind}:{sha256}" for kind, sha256 in pools)


def provenance_pools(text: str | None) -> list[tuple[str, str]]:
    """`knowledge_provenance` read back: [(kind, sha256)], [] for "" (none) or null (not recorded)."""
    return [tuple(part.split(":", 1)) for part in (text or "").split("+") if part]  # type: ignore[misc]


def conform(results: pl.DataFrame) -> pl.DataFrame:
    """A results table written before the optional columns existed, given them as nulls (cost and session
    columns unknown), so every analysis reads any results Parquet; other columns are kept as they are."""
    missing = [pl.lit(None, dtype=RESULT_SCHEMA[c]).alias(c) for c in OPTIONAL_COLUMNS if c not in results.columns]
    return results.with_columns(missing) if missing else results


def markdown_table(results: pl.DataFrame, digits: int = 3) -> str:
    """The results rows as a markdown table: labels that vary, then the metrics and session counts, then how big
    each row's knowledge pool, teacher sample and adapter training were (where any row has them)."""
    results = conform(results)
    labels = [c for c in ("domain", "rq", "method", "knowledge_format", "strategy", "ratio", "utilization", "model")
              if c in ("domain", "method") or results[c].n_unique() > 1]
    sizes = [c for c in ("train_sessions", "teacher_sessions", "train_examples", "train_steps", "best_step")
             if (results[c].fill_null(0) > 0).any()]
    columns = labels + METRIC_COLUMNS + ["n_scored", "n_sessions"] + sizes
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in results.select(columns).iter_rows(named=True):
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else "" if v is None else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
