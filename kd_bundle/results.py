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
    "teacher_tokens": pl.Int64,
    "wall_seconds": pl.Float64,
    "predictions_sha256": pl.String,
}
METRIC_COLUMNS = ["precision", "recall", "coverage", "strict_precision", "strict_recall", "strict_coverage"]

_DEFAULTS: dict[str, Any] = {
    "knowledge_format": "none",
    "strategy": "all",
    "ratio": 1.0,
    "utilization": "none",
    "model": "",
    "teacher_tokens": 0,
    "wall_seconds": 0.0,
    "predictions_sha256": "",
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


def scored_row(labels: CellLabels, scores: dict[str, Any], predictions_sha256: str = "") -> pl.DataFrame:
    """A results row from labels and a metrics dict (extra metric keys are ignored)."""
    metrics = {k: v for k, v in scores.items() if k in RESULT_SCHEMA}
    return result_row(**labels.model_dump(), **metrics, predictions_sha256=predictions_sha256)


def markdown_table(results: pl.DataFrame, digits: int = 3) -> str:
    """The results rows as a markdown table: labels that vary, then the metrics and session counts."""
    labels = [c for c in ("domain", "rq", "method", "knowledge_format", "strategy", "ratio", "utilization", "model")
              if c in ("domain", "method") or results[c].n_unique() > 1]
    columns = labels + METRIC_COLUMNS + ["n_scored", "n_sessions"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in results.select(columns).iter_rows(named=True):
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
