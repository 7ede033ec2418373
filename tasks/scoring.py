"""Score predictions, gather result rows, and publish the results table (Parquet file + Prefect table artifact)."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect.artifacts import create_table_artifact

from kd_bundle import metrics, results, sessions
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from tasks.common import stage_task


@stage_task("metrics", "results", "sessions", task_run_name="score-{labels.method}-{labels.knowledge_format}-{labels.utilization}")
def score_predictions(all_sessions: ArtifactRef, predictions: ArtifactRef, labels: results.CellLabels,
                      split: str = "test") -> ArtifactRef:
    target = sessions.split_of(read_artifact(all_sessions), split)
    scores = metrics.score_predictions(read_artifact(predictions), target)
    return write_artifact(results.scored_row(labels, scores, predictions.sha256), "results")


@stage_task("results", task_run_name="collect-results")
def collect_results(rows: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(results.combine_results([read_artifact(row) for row in rows]), "results")


def publish_results(table: ArtifactRef, key: str, out_dir: Path) -> Path:
    """Called from a flow, not a task: side effects only, so nothing to cache. A stable copy of the table
    under `out_dir` and a table artifact in the Prefect UI (versioned by `key` across runs)."""
    frame = read_artifact(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{key}.parquet"
    shutil.copyfile(table.path(), target)
    create_table_artifact(key=key, table=frame.to_dicts(), description=f"kd-bundle results ({table})")
    return target
