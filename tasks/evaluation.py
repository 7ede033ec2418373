"""Evaluation stages: the reference rows (non-LLM baselines, the teacher answering test sessions), then scoring every
row's predictions, gathering the rows and publishing the results table (Parquet file + Prefect table artifact)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import polars as pl
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from kd_bundle.config import BaselineConfig, DataConfig, settings
from kd_bundle.data.sessions import source_files, split_of
from kd_bundle.evaluation import baselines, metrics, results, teacher_baseline
from kd_bundle.evaluation.predictions import write_predictions_jsonl
from kd_bundle.manifest import build_manifest, files_sha256, seeds_in, write_with_manifest
from kd_bundle.report import costs
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from kd_bundle.teacher import RequestCache, TeacherConfig, request_cache_path
from tasks.common import stage_task, teacher_task
from tasks.teacher import NO_TASK_RETRIES, TEACHER_LIBRARY, teacher_client

log = logging.getLogger(__name__)
_DISTILLED_KINDS = ("session_rules", "thoughts")


class TeacherPredictions(BaseModel, frozen=True):
    predictions: ArtifactRef  # predictions.PREDICTION_COLUMNS
    usage: ArtifactRef
    tokens: int  # prompt + completion tokens behind these predictions (results.RESULT_SCHEMA teacher_tokens)


@stage_task("evaluation.baselines", "data.sessions", task_run_name="predict-{cfg.method}-baseline")
def predict_baseline(all_sessions: ArtifactRef, patterns: ArtifactRef | None, cfg: BaselineConfig,
                     split: str = "test") -> ArtifactRef:
    frame = read_artifact(all_sessions)
    train, target = split_of(frame, "train"), split_of(frame, split)
    if cfg.method not in baselines.POSITIONAL_METHODS:  # the positional references read no category
        target = baselines.infer_categories(target, train, keep_given=cfg.categories == "given")
    predictions = baselines.predict_baseline(target, read_artifact(patterns) if patterns else None, cfg)
    return write_artifact(predictions, "predictions")


@teacher_task(*TEACHER_LIBRARY, "evaluation.teacher_baseline", "evaluation.predictions", "data.sessions",
              task_run_name="teacher-predict-{split}", **NO_TASK_RETRIES)
def teacher_predict(sessions: ArtifactRef, cfg: teacher_baseline.TeacherPredictConfig, teacher: TeacherConfig,
                    knowledge: ArtifactRef | None = None, split: str = "test") -> TeacherPredictions:
    """`knowledge`: retrieval's RETRIEVED_COLUMNS (or session_id + knowledge), already narrowed to the formats wanted."""
    target = split_of(read_artifact(sessions), split)
    with teacher_client(teacher, f"predict-{split}") as client:
        frame = teacher_baseline.predict_bundles(target, cfg, client, read_artifact(knowledge) if knowledge else None)
        usage = client.usage_frame()
    tokens = int(usage["prompt_tokens"].sum() + usage["completion_tokens"].sum()) if usage.height else 0
    return TeacherPredictions(predictions=write_artifact(frame, "predictions"),
                              usage=write_artifact(usage, "teacher_usage"), tokens=tokens)


@stage_task("evaluation.metrics", "evaluation.results", "data.sessions", "report.costs",
            task_run_name="score-{labels.method}-{labels.knowledge_format}-{labels.utilization}")
def score_predictions(all_sessions: ArtifactRef, predictions: ArtifactRef, labels: results.CellLabels,
                      split: str = "test", *, adapter: ArtifactRef | None = None,
                      knowledge: dict[str, ArtifactRef] | None = None, teacher: TeacherConfig | None = None,
                      teacher_usage: ArtifactRef | None = None,
                      prompt_knowledge: list[ArtifactRef] | None = None) -> ArtifactRef:
    """One results row: scores, per-session lists, and the cost and quantity columns of what the row used.

    `adapter`: the student's adapter (training stats); `knowledge`: format -> the pool the row drew on (quantities,
    and for rules / thoughts the extraction usage, looked up in the request cache with `teacher`'s request keys),
    plus "sessions" -> the training sessions behind them (counted only: raw examples are knowledge when "raw" is used);
    `teacher_usage`: the usage frame of teacher inference (teacher rows). Without them the columns stay null.
    `adapter` and `prompt_knowledge` (the pools the prompt retrieved from, in prompt order) are recorded by hash, so
    that `python -m kd_bundle generate --student best:...` can apply the row's student to new sessions.
    """
    target = split_of(read_artifact(all_sessions), split)
    frame = read_artifact(predictions)
    per_session = metrics.session_scores(frame, target)
    extra = {**metrics.session_lists(per_session), **costs.inference_usage(frame),
             "adapter_sha256": adapter.sha256 if adapter is not None else "",
             "knowledge_sha256": results.knowledge_provenance([(r.kind, r.sha256) for r in prompt_knowledge or []])}
    if labels.method in ("student", "teacher"):
        extra.update(costs.read_train_stats(adapter.path() if adapter is not None else None))
    if teacher_usage is not None:
        spent = costs.usage_totals(read_artifact(teacher_usage))
        extra.update(teacher_cost=spent["cost"], wall_seconds=spent["seconds"])
    if knowledge:
        extra.update(_knowledge_columns(knowledge, teacher))
    row = results.scored_row(labels, metrics.summarise_scores(per_session), predictions.sha256, extra)
    return write_artifact(row, "results")


def _knowledge_columns(knowledge: dict[str, ArtifactRef], teacher: TeacherConfig | None) -> dict:
    frames = {ref.kind: read_artifact(ref) for name, ref in knowledge.items() if name != "sessions"}
    counted = []
    if "sessions" in knowledge:  # the training sessions behind the pools: counted; their text is not knowledge here
        raw = costs.knowledge_quantity("sessions", read_artifact(knowledge["sessions"]))
        counted.append({"train_sessions": raw["train_sessions"]})
    columns = costs.add_quantities(counted + [costs.knowledge_quantity(kind, f) for kind, f in frames.items()])
    distilled = [f for kind, f in frames.items() if kind in _DISTILLED_KINDS]
    spent: dict = {"tokens": 0, "cost": 0.0, "seconds": 0.0, "truncated": 0}
    if distilled and teacher is None:
        spent = dict.fromkeys(spent)  # unknown, not free
    elif distilled:
        keys = [k for f in distilled for k in costs.conversation_request_keys(f, teacher)]
        cache = RequestCache(request_cache_path())
        try:
            spent = costs.usage_totals(cache.usage(keys), keys)
        finally:
            cache.close()
        if spent["missing_requests"]:
            log.warning("%d of %d knowledge requests are not in the request cache %s: extraction cost unknown",
                        spent["missing_requests"], len(set(keys)), cache.path)
            spent = dict.fromkeys(spent)
    columns.update(extraction_tokens=spent["tokens"], extraction_cost=spent["cost"],
                   extraction_seconds=spent["seconds"], knowledge_truncated=spent["truncated"])
    return columns


@stage_task("evaluation.results", task_run_name="collect-results")
def collect_results(rows: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(results.combine_results([read_artifact(row) for row in rows]), "results")


def publish_results(table: ArtifactRef, key: str, out_dir: Path, data_dirs: dict[str, str] | None = None) -> Path:
    """Called from a flow, not a task: side effects only, so nothing to cache. A stable copy of the table
    under `out_dir`, each row's predictions as the JSON Lines `python -m kd_bundle score` reads (in
    `out_dir/<key>/predictions/`), and a table artifact in the Prefect UI (versioned by `key` across runs)."""
    frame = read_artifact(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{key}.parquet"
    write_with_manifest(table.path(), target, run_manifest(frame, key, data_dirs or {}))
    for row in frame.filter(pl.col("predictions_sha256") != "").iter_rows(named=True):
        scored = ArtifactRef(kind="predictions", sha256=row["predictions_sha256"], rows=row["n_sessions"])
        write_predictions_jsonl(read_artifact(scored), out_dir / key / "predictions" / f"{row_label(row)}.jsonl")
    create_table_artifact(key=key, table=ui_table(frame), description=f"kd-bundle results ({table})")
    return target


def run_manifest(frame: pl.DataFrame, key: str, data_dirs: dict[str, str]) -> dict:
    """Commit, package versions, the run's seeds, a hash of the data files its domains were read from (your own
    folder's tables for a label in `data_dirs`), the device."""
    parameters = flow_run.parameters or {}
    data_root = settings().data_root
    domains = sorted(set(frame["domain"].to_list()))
    configs = [DataConfig(domain=d, custom_dir=data_dirs.get(d)) for d in domains]
    files = [f for cfg in configs for f in source_files(cfg, data_root)]
    return build_manifest(seeds=seeds_in(parameters), data_sha256=files_sha256(files), key=key,
                          data_files={cfg.domain: [str(f) for f in source_files(cfg, data_root)] for cfg in configs},
                          flow_run_id=str(flow_run.id) if flow_run.id else None)


def row_label(row: dict) -> str:
    """A file name for one results row: 'food-rq3-student-rules_to_thoughts-sft_and_icl-all-1' for the SFT+ICL cell
    trained on rules and prompted with thoughts."""
    label = "-".join(str(row[c]) for c in ("domain", "rq", "method", "knowledge_format", "utilization", "strategy"))
    label = f"{label}-{row['ratio']:g}".replace("|", "_to_").replace("+", "_and_")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def ui_table(frame: pl.DataFrame, digits: int = 3) -> list[dict]:
    """The rows the Prefect UI shows: floats rounded to `digits`, hashes and per-session lists left to the Parquet."""
    hidden = [c for c in frame.columns if c.endswith("sha256") or c in results.SESSION_COLUMNS]
    shown = frame.drop(hidden)
    return shown.with_columns(pl.col(pl.Float64, pl.Float32).round(digits)).to_dicts()
