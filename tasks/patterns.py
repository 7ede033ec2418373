from __future__ import annotations

from kd_bundle import patterns, sessions
from kd_bundle.config import PatternConfig
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from tasks.common import stage_task


@stage_task("patterns", "sessions", task_run_name="mine-patterns")
def mine_patterns(all_sessions: ArtifactRef, cfg: PatternConfig) -> ArtifactRef:
    train = sessions.split_of(read_artifact(all_sessions), "train")
    return write_artifact(patterns.mine_patterns(train, cfg), "patterns")
