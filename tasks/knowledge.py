"""Knowledge-quantity stages: sampled pools, multi-domain pools, difficulty scores. Cheap, so no teacher calls."""

from __future__ import annotations

from kd_bundle import pools
from kd_bundle.sampling import SamplingConfig
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from tasks.common import stage_task


@stage_task("pools", "sampling", task_run_name="sample-training-{cfg.strategy}-{cfg.ratio}")
def sample_training(all_sessions: ArtifactRef, cfg: SamplingConfig, embeddings: ArtifactRef | None = None,
                    difficulty: ArtifactRef | None = None) -> ArtifactRef:
    frames = [read_artifact(ref) if ref else None for ref in (embeddings, difficulty)]
    return write_artifact(pools.sample_training(read_artifact(all_sessions), cfg, *frames), "sessions")


@stage_task("pools", task_run_name="select-{knowledge.kind}")
def select_knowledge(knowledge: ArtifactRef, sampled_sessions: ArtifactRef) -> ArtifactRef:
    return write_artifact(pools.select_knowledge(read_artifact(knowledge), read_artifact(sampled_sessions)), knowledge.kind)


@stage_task("pools", "metrics", task_run_name="difficulty-scores")
def difficulty_scores(train_predictions: ArtifactRef, all_sessions: ArtifactRef) -> ArtifactRef:
    return write_artifact(pools.difficulty_scores(read_artifact(train_predictions), read_artifact(all_sessions)),
                          "difficulty")


@stage_task("pools", task_run_name="combine-domains-{target.kind}")
def combine_domains(target: ArtifactRef, others: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(pools.combine_domains(read_artifact(target), [read_artifact(o) for o in others]), target.kind)


@stage_task("pools", task_run_name="pool-training")
def pool_training(frames: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(pools.pool_training([read_artifact(f) for f in frames]), frames[0].kind)
