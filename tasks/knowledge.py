"""Knowledge-quantity stages: sampled pools, multi-domain pools, difficulty scores. Cheap, so no teacher calls: the
teacher's difficulty is read from the rule distillation's record of its first answers."""

from __future__ import annotations

from kd_bundle import pools
from kd_bundle.config import PatternConfig
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


@stage_task("pools", task_run_name="teacher-difficulty")
def teacher_difficulty(session_rules: ArtifactRef) -> ArtifactRef:
    return write_artifact(pools.teacher_difficulty(read_artifact(session_rules)), "difficulty")


@stage_task("pools", "metrics", "patterns", "baselines", task_run_name="pattern-difficulty")
def pattern_difficulty(all_sessions: ArtifactRef, cfg: PatternConfig, seed: int = 0) -> ArtifactRef:
    return write_artifact(pools.pattern_difficulty(read_artifact(all_sessions), cfg, seed=seed), "difficulty")


@stage_task("pools", task_run_name="combine-domains-{target.kind}")
def combine_domains(target: ArtifactRef, others: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(pools.combine_domains(read_artifact(target), [read_artifact(o) for o in others]), target.kind)


@stage_task("pools", task_run_name="pool-training")
def pool_training(frames: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(pools.pool_training([read_artifact(f) for f in frames]), frames[0].kind)
