"""Score predictions, gather result rows, and publish the results table (Parquet file + Prefect table artifact)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from kd_bundle import metrics, results, sessions
from kd_bundle.config import DataConfig, settings
from kd_bundle.manifest import build_manifest, files_sha256, seeds_in, write_with_manifest
from kd_bundle.predictions import write_predictions_jsonl
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from tasks.common import stage_task
from tasks.sessions import _domain_files


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
    under `out_dir`, each row's predictions as the JSON Lines `python -m kd_bundle score` reads (in
    `out_dir/<key>/predictions/`), and a table artifact in the Prefect UI (versioned by `key` across runs)."""
    frame = read_artifact(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{key}.parquet"
    write_with_manifest(table.path(), target, run_manifest(frame, key))
    for row in frame.filter(pl.col("predictions_sha256") != "").iter_rows(named=True):
        scored = ArtifactRef(kind="predictions", sha256=row["predictions_sha256"], rows=row["n_sessions"])
        write_predictions_jsonl(read_artifact(scored), out_dir / key / "predictions" / f"{row_label(row)}.jsonl")
    create_table_artifact(key=key, table=frame.to_dicts(), description=f"kd-bundle results ({table})")
    return target


def run_manifest(frame: pl.DataFrame, key: str) -> dict:
    """Commit, package versions, the run's seeds, a hash of the source data files of its domains, the device."""
    parameters = flow_run.parameters or {}
    data_root = settings().data_root
    files = [f for domain in sorted(set(frame["domain"].to_list()))
             for f in _domain_files({"cfg": DataConfig(domain=domain), "data_root": data_root})]
    return build_manifest(seeds=seeds_in(parameters), data_sha256=files_sha256(files), key=key,
                          flow_run_id=str(flow_run.id) if flow_run.id else None)


def row_label(row: dict) -> str:
    """A file name for one results row: 'food-rq3-student-rules_to_thoughts-sft_and_icl-all-1' for the SFT+ICL cell
    trained on rules and prompted with thoughts."""
    label = "-".join(str(row[c]) for c in ("domain", "rq", "method", "knowledge_format", "utilization", "strategy"))
    label = f"{label}-{row['ratio']:g}".replace("|", "_to_").replace("+", "_and_")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
