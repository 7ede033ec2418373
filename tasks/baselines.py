from __future__ import annotations

from kd_bundle import baselines, sessions
from kd_bundle.config import BaselineConfig
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from tasks.common import stage_task


@stage_task("baselines", "sessions", task_run_name="predict-{cfg.method}-baseline")
def predict_baseline(all_sessions: ArtifactRef, patterns: ArtifactRef | None, cfg: BaselineConfig,
                     split: str = "test") -> ArtifactRef:
    frame = read_artifact(all_sessions)
    train, target = sessions.split_of(frame, "train"), sessions.split_of(frame, split)
    target = baselines.infer_categories(target, train, keep_given=cfg.categories == "given")
    predictions = baselines.predict_baseline(target, read_artifact(patterns) if patterns else None, cfg)
    return write_artifact(predictions, "predictions")
