"""The results table the Prefect UI shows: rounded to 3 digits, hashes and per-session lists left to the Parquet."""

from __future__ import annotations

from kd_bundle.evaluation.results import SESSION_COLUMNS
from tasks.evaluation import ui_table
from tests.kd_bundle.report.test_analysis import _row


def test_ui_table_rounds_and_leaves_hashes_out():
    rows = ui_table(_row(1 / 3, predictions_sha256="ab" * 32, wall_seconds=12.34567))
    assert len(rows) == 1
    row = rows[0]
    assert "predictions_sha256" not in row and not set(SESSION_COLUMNS) & set(row)
    assert (row["precision"], row["wall_seconds"], row["n_sessions"]) == (0.333, 12.346, 10)
    assert row["domain"] == "food" and row["train_seconds"] is None
