"""Results rows: the schema is enforced, rows combine into one table, and the markdown table shows one line per row."""

from __future__ import annotations

import polars as pl
import pytest

from kd_bundle.evaluation.results import (
    METRIC_COLUMNS,
    RESULT_SCHEMA,
    CellLabels,
    combine_results,
    markdown_table,
    result_row,
    scored_row,
)

METRICS = dict(precision=0.5, recall=0.25, coverage=0.75, strict_precision=0.4, strict_recall=0.2, strict_coverage=0.6)


def _row(**overrides) -> pl.DataFrame:
    fields = dict(domain="food", rq="baseline", method="category-baseline", n_sessions=180, n_scored=170, n_failed=10)
    return result_row(**{**fields, **METRICS, **overrides})


def test_result_row_fills_defaults_and_keeps_schema() -> None:
    row = _row()
    assert row.schema == pl.Schema(RESULT_SCHEMA)
    assert row.height == 1
    values = row.row(0, named=True)
    assert (values["knowledge_format"], values["strategy"], values["ratio"], values["utilization"]) == (
        "none", "all", 1.0, "none",
    )  # fmt: skip
    assert (values["teacher_tokens"], values["predictions_sha256"], values["n_failed"]) == (0, "", 10)
    assert values["precision"] == 0.5


def test_result_row_rejects_unknown_field() -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['accuracy'\]"):
        _row(accuracy=0.9)


def test_result_row_rejects_missing_field() -> None:
    fields = dict(domain="food", rq="baseline", method="x", n_sessions=1, n_scored=1, n_failed=0, **METRICS)
    del fields["recall"], fields["n_failed"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['recall', 'n_failed'\]"):
        result_row(**fields)


def test_scored_row_ignores_extra_metric_keys() -> None:
    labels = CellLabels(domain="clothing", method="teacher", rq="rq1", knowledge_format="patterns", model="m")
    scores = {**METRICS, "n_sessions": 18, "n_scored": 17, "n_failed": 1, "wall_seconds": 2.5, "hits": 12}
    row = scored_row(labels, scores, predictions_sha256="abc").row(0, named=True)
    assert (row["domain"], row["method"], row["knowledge_format"], row["model"]) == ("clothing", "teacher", "patterns", "m")
    assert (row["n_scored"], row["wall_seconds"], row["predictions_sha256"]) == (17, 2.5, "abc")
    with pytest.raises(ValueError, match="missing"):
        scored_row(labels, {"precision": 1.0})


def test_combine_results_keeps_schema_and_order() -> None:
    first = _row(domain="electronic")
    # A frame with columns in another order and an extra column still combines to RESULT_SCHEMA.
    second = _row(domain="food").with_columns(note=pl.lit("x")).select(["note", *reversed(list(RESULT_SCHEMA))])
    combined = combine_results([first, second])
    assert combined.schema == pl.Schema(RESULT_SCHEMA)
    assert combined["domain"].to_list() == ["electronic", "food"]
    empty = combine_results([])
    assert empty.schema == pl.Schema(RESULT_SCHEMA) and empty.height == 0


def test_combine_results_rejects_frame_missing_a_column() -> None:
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        combine_results([_row(), _row().drop("recall")])


def test_markdown_table_one_line_per_row_plus_header() -> None:
    results = combine_results([_row(model="a"), _row(model="b", precision=1 / 3), _row(model="c")])
    lines = markdown_table(results).split("\n")
    assert len(lines) == 2 + results.height  # header, separator, one line per row
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    # domain and method always; model varies, so it is shown; constant labels (rq, strategy...) are not.
    assert header == ["domain", "method", "model", *METRIC_COLUMNS, "n_scored", "n_sessions"]
    assert lines[1] == "|" + "---|" * len(header)
    assert lines[3] == "| food | category-baseline | b | 0.333 | 0.250 | 0.750 | 0.400 | 0.200 | 0.600 | 170 | 180 |"
    assert markdown_table(results, digits=1).split("\n")[3].split(" | ")[3] == "0.3"
