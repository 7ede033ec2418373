"""Knowledge stages: patterns mined from the training bundles, rules and thoughts distilled by the teacher, and the
quantity stages over them (sampled pools, multi-domain pools, difficulty scores). The quantity stages are cheap and
call no teacher: the teacher's difficulty is read from the rule distillation's record of its first answers."""

from __future__ import annotations

from pydantic import BaseModel

from kd_bundle.config import PatternConfig
from kd_bundle.data import sessions
from kd_bundle.knowledge import patterns, pools, rules, thoughts
from kd_bundle.knowledge.sampling import SamplingConfig
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from kd_bundle.teacher import TeacherConfig
from tasks.common import stage_task, teacher_task
from tasks.teacher import NO_TASK_RETRIES, TEACHER_LIBRARY, teacher_client


class RuleArtifacts(BaseModel, frozen=True):
    session_rules: ArtifactRef  # rules.SESSION_RULE_COLUMNS, with conversations
    rules: ArtifactRef  # rules.RULE_COLUMNS, consolidated per domain
    usage: ArtifactRef  # teacher.USAGE_COLUMNS, one row per request


class ThoughtArtifacts(BaseModel, frozen=True):
    thoughts: ArtifactRef
    usage: ArtifactRef


@stage_task("knowledge.patterns", "data.sessions", task_run_name="mine-patterns")
def mine_patterns(all_sessions: ArtifactRef, cfg: PatternConfig) -> ArtifactRef:
    train = sessions.split_of(read_artifact(all_sessions), "train")
    return write_artifact(patterns.mine_patterns(train, cfg), "patterns")


@teacher_task(*TEACHER_LIBRARY, "knowledge.rules", "knowledge.reflection", task_run_name="distill-rules-{domain}",
              **NO_TASK_RETRIES)
def distill_rules(sessions: ArtifactRef, domain: str, cfg: rules.RuleConfig, teacher: TeacherConfig) -> RuleArtifacts:
    with teacher_client(teacher, f"rules-{domain}") as client:
        session_rules, consolidated = rules.distill_rules(read_artifact(sessions), domain, cfg, client)
        usage = write_artifact(client.usage_frame(), "teacher_usage")
    return RuleArtifacts(session_rules=write_artifact(session_rules, "session_rules"),
                         rules=write_artifact(consolidated, "rules"), usage=usage)


@teacher_task(*TEACHER_LIBRARY, "knowledge.thoughts", task_run_name="distill-thoughts-{domain}", **NO_TASK_RETRIES)
def distill_thoughts(sessions: ArtifactRef, domain: str, cfg: thoughts.ThoughtConfig, teacher: TeacherConfig) -> ThoughtArtifacts:
    with teacher_client(teacher, f"thoughts-{domain}") as client:
        frame = thoughts.distill_thoughts(read_artifact(sessions), domain, cfg, client)
        usage = write_artifact(client.usage_frame(), "teacher_usage")
    return ThoughtArtifacts(thoughts=write_artifact(frame, "thoughts"), usage=usage)


@teacher_task(*TEACHER_LIBRARY, "knowledge.rules", "knowledge.reflection", task_run_name="first-answers-{domain}",
              **NO_TASK_RETRIES)
def first_answer_difficulty(sessions: ArtifactRef, domain: str, teacher: TeacherConfig) -> ArtifactRef:
    """The teacher's first answer on every pool session, for difficulty sampling beyond the teacher's budget."""
    with teacher_client(teacher, f"first-answers-{domain}") as client:
        return write_artifact(rules.first_answer_difficulty(read_artifact(sessions), domain, client), "difficulty")


@stage_task("knowledge.pools", "knowledge.sampling", task_run_name="sample-training-{cfg.strategy}-{cfg.ratio}")
def sample_training(all_sessions: ArtifactRef, cfg: SamplingConfig, embeddings: ArtifactRef | None = None,
                    difficulty: ArtifactRef | None = None) -> ArtifactRef:
    frames = [read_artifact(ref) if ref else None for ref in (embeddings, difficulty)]
    return write_artifact(pools.sample_training(read_artifact(all_sessions), cfg, *frames), "sessions")


@stage_task("knowledge.pools", task_run_name="select-{knowledge.kind}")
def select_knowledge(knowledge: ArtifactRef, sampled_sessions: ArtifactRef) -> ArtifactRef:
    return write_artifact(pools.select_knowledge(read_artifact(knowledge), read_artifact(sampled_sessions)), knowledge.kind)


@stage_task("knowledge.pools", task_run_name="teacher-difficulty")
def teacher_difficulty(session_rules: ArtifactRef) -> ArtifactRef:
    return write_artifact(pools.teacher_difficulty(read_artifact(session_rules)), "difficulty")


@stage_task("knowledge.pools", "evaluation.metrics", "knowledge.patterns", "evaluation.baselines",
            task_run_name="pattern-difficulty")
def pattern_difficulty(all_sessions: ArtifactRef, cfg: PatternConfig, seed: int = 0) -> ArtifactRef:
    return write_artifact(pools.pattern_difficulty(read_artifact(all_sessions), cfg, seed=seed), "difficulty")


@stage_task("knowledge.pools", task_run_name="combine-domains-{target.kind}")
def combine_domains(target: ArtifactRef, others: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(pools.combine_domains(read_artifact(target), [read_artifact(o) for o in others]), target.kind)


@stage_task("knowledge.pools", task_run_name="pool-training")
def pool_training(frames: list[ArtifactRef]) -> ArtifactRef:
    return write_artifact(pools.pool_training([read_artifact(f) for f in frames]), frames[0].kind)
