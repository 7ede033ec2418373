"""Student stages: embed -> index -> retrieve knowledge -> (train adapter) -> predict. Each returns an ArtifactRef.

`knowledge` maps a format name to its frame's ref (the knowledge-pool contract is in kd_bundle/student/retrieval.py);
the sessions ref itself is a valid "raw" entry. The adapter is a content-addressed folder ("adapter" kind).

Cache keys follow the refs: give `retrieve_knowledge` only the formats a stage uses (one call for the SFT input
formats, one for the prompt formats; retrieval is cheap), and `train_adapter` `retrieved=None` when the training
input carries no knowledge, so an adapter is retrained only when its own training knowledge changes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from kd_bundle.report.costs import train_stats_path
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact, write_directory
from kd_bundle.student import generate, retrieval, training
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.retrieval import RetrievalConfig
from kd_bundle.student.training import SFTConfig
from tasks.common import stage_task

log = logging.getLogger(__name__)


@stage_task("student.retrieval", task_run_name="embed-sessions-{cfg.method}")
def embed_sessions(all_sessions: ArtifactRef, cfg: RetrievalConfig) -> ArtifactRef:
    return write_artifact(retrieval.embed_sessions(read_artifact(all_sessions), cfg), "embeddings")


@stage_task("student.retrieval", task_run_name="index-sessions")
def index_sessions(all_sessions: ArtifactRef, embeddings: ArtifactRef) -> ArtifactRef:
    return write_artifact(retrieval.build_index(read_artifact(embeddings), read_artifact(all_sessions)), "index")


@stage_task("student.retrieval", "knowledge.patterns", "evaluation.baselines", "data.prompts",
            task_run_name="retrieve-knowledge-k{cfg.k}")
def retrieve_knowledge(all_sessions: ArtifactRef, embeddings: ArtifactRef, index: ArtifactRef,
                       knowledge: dict[str, ArtifactRef], cfg: RetrievalConfig) -> ArtifactRef:
    pool = {name: read_artifact(ref) for name, ref in knowledge.items()}
    frames = [read_artifact(ref) for ref in (all_sessions, embeddings, index)]
    return write_artifact(retrieval.retrieve_knowledge(*frames, pool, cfg), "retrieved")


# validation decodes through generate / grammar / parsing and scores with metrics: all of it chooses the kept weights
@stage_task("student.training", "student.validation", "student.batches", "student.compute", "student.model",
            "student.icl", "student.generate", "student.prefix", "student.grammar", "data.parsing", "data.prompts",
            "evaluation.metrics", "evaluation.predictions", task_run_name="train-adapter")
def train_adapter(all_sessions: ArtifactRef, retrieved: ArtifactRef | None, thoughts: ArtifactRef | None,
                  model: StudentConfig, cfg: SFTConfig) -> ArtifactRef:
    with tempfile.TemporaryDirectory(prefix="kd-adapter-") as tmp:
        result = training.train_adapter(read_artifact(all_sessions), read_artifact(retrieved) if retrieved else None,
                                       read_artifact(thoughts) if thoughts else None, model, cfg, Path(tmp) / "adapter")
        log.info("adapter trained: %d examples, %d steps (kept: %s), %.0f tokens/s, loss %s, validation loss %s, "
                 "strict precision %s", result.examples, result.steps,
                 result.best_step if result.best_step is not None else "last", result.tokens_per_second,
                 result.losses[-1:], result.valid_losses, result.valid_precisions)
        ref = write_directory(result.adapter_dir, "adapter")
    # What the adapter cost, beside it, so a results row scored from it reports training cost; the first training
    # of this content keeps its record.
    stats = train_stats_path(ref.path())
    if not stats.exists():
        staging = stats.with_name(f".{stats.name}.{os.getpid()}")
        staging.write_text(json.dumps({
            "seconds": result.seconds, "train_tokens": result.train_tokens, "steps": result.steps,
            "examples": result.examples, "seed": cfg.seed, "tokens_per_second": result.tokens_per_second,
            "train_losses": result.losses, "valid_steps": result.valid_steps, "valid_losses": result.valid_losses,
            "valid_precisions": result.valid_precisions,
            "best_step": result.best_step, "valid_examples": result.valid_examples,
            "gradient_checkpointing": result.gradient_checkpointing, "autocast": result.autocast}))
        os.replace(staging, stats)
    return ref


@stage_task("student.generate", "student.prefix", "student.model", "student.icl", "student.grammar", "data.parsing",
            "data.prompts", "evaluation.predictions", task_run_name="student-predict")
def student_predict(all_sessions: ArtifactRef, retrieved: ArtifactRef | None, adapter: ArtifactRef | None,
                    model: StudentConfig, icl: ICLConfig, split: str = "test") -> ArtifactRef:
    predictions = generate.predict_sessions(read_artifact(all_sessions), read_artifact(retrieved) if retrieved else None,
                                            model, icl, adapter.path() if adapter else None, split)
    return write_artifact(predictions, "predictions")
