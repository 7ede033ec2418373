"""Teacher stages: rules, thoughts and the teacher baseline, cached on content.

A task's cache key is the sessions' content hash, the domain, the stage config (prompt version included), the
TeacherConfig (model + generation settings), and the source of the library modules it calls. The endpoint URL and
the API key are read from the environment inside the task, so they are never an input, a parameter or a key.
Below the task cache sits the request cache (kd_bundle.teacher): a task recomputed after an edit or a crash pays
only for requests never answered. A loopback endpoint for "smollm2" with nothing listening gets the embedded
server, started at the first request not already cached and stopped when the task ends.

The client's retries are the only retry layer (bounded, logged, a clear final error): these tasks run with
`retries=0`, so an endpoint that always fails gets (max_retries + 1) tries per distinct request, not a multiple.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from pydantic import BaseModel

from kd_bundle import rules, teacher_baseline, thoughts
from kd_bundle.models import SMOLLM2
from kd_bundle.sessions import split_of
from kd_bundle.store import ArtifactRef, read_artifact, write_artifact
from kd_bundle.teacher import Progress, TeacherClient, TeacherConfig
from kd_bundle.teacher_server import EmbeddedTeacher
from tasks.common import teacher_task

_LIBRARY = ("teacher", "teacher_config", "teacher_client", "teacher_reply", "teacher_pool", "teacher_progress",
            "request_cache", "answer_schema", "parsing", "prompts")
_NO_TASK_RETRIES = {"retries": 0, "retry_delay_seconds": 0}  # replaces teacher_task's; see the module docstring


class RuleArtifacts(BaseModel, frozen=True):
    session_rules: ArtifactRef  # rules.SESSION_RULE_COLUMNS, with conversations
    rules: ArtifactRef  # rules.RULE_COLUMNS, consolidated per domain
    usage: ArtifactRef  # teacher.USAGE_COLUMNS, one row per request


class ThoughtArtifacts(BaseModel, frozen=True):
    thoughts: ArtifactRef
    usage: ArtifactRef


class TeacherPredictions(BaseModel, frozen=True):
    predictions: ArtifactRef  # predictions.PREDICTION_COLUMNS
    usage: ArtifactRef
    tokens: int  # prompt + completion tokens behind these predictions (results.RESULT_SCHEMA teacher_tokens)


@teacher_task(*_LIBRARY, "rules", "reflection", task_run_name="distill-rules-{domain}", **_NO_TASK_RETRIES)
def distill_rules(sessions: ArtifactRef, domain: str, cfg: rules.RuleConfig, teacher: TeacherConfig) -> RuleArtifacts:
    with _teacher(teacher, f"rules-{domain}") as client:
        session_rules, consolidated = rules.distill_rules(read_artifact(sessions), domain, cfg, client)
        usage = write_artifact(client.usage_frame(), "teacher_usage")
    return RuleArtifacts(session_rules=write_artifact(session_rules, "session_rules"),
                         rules=write_artifact(consolidated, "rules"), usage=usage)


@teacher_task(*_LIBRARY, "thoughts", "retrieval", task_run_name="distill-thoughts-{domain}", **_NO_TASK_RETRIES)
def distill_thoughts(sessions: ArtifactRef, domain: str, cfg: thoughts.ThoughtConfig, teacher: TeacherConfig) -> ThoughtArtifacts:
    with _teacher(teacher, f"thoughts-{domain}") as client:
        frame = thoughts.distill_thoughts(read_artifact(sessions), domain, cfg, client)
        usage = write_artifact(client.usage_frame(), "teacher_usage")
    return ThoughtArtifacts(thoughts=write_artifact(frame, "thoughts"), usage=usage)


@teacher_task(*_LIBRARY, "teacher_baseline", "predictions", "sessions", task_run_name="teacher-predict-{split}",
              **_NO_TASK_RETRIES)
def teacher_predict(sessions: ArtifactRef, cfg: teacher_baseline.TeacherPredictConfig, teacher: TeacherConfig,
                    knowledge: ArtifactRef | None = None, split: str = "test") -> TeacherPredictions:
    """`knowledge`: retrieval's RETRIEVED_COLUMNS (or session_id + knowledge), already narrowed to the formats wanted."""
    target = split_of(read_artifact(sessions), split)
    with _teacher(teacher, f"predict-{split}") as client:
        frame = teacher_baseline.predict_bundles(target, cfg, client, read_artifact(knowledge) if knowledge else None)
        usage = client.usage_frame()
    tokens = int(usage["prompt_tokens"].sum() + usage["completion_tokens"].sum()) if usage.height else 0
    return TeacherPredictions(predictions=write_artifact(frame, "predictions"),
                              usage=write_artifact(usage, "teacher_usage"), tokens=tokens)


@contextlib.contextmanager
def _teacher(cfg: TeacherConfig, key: str) -> Iterator[TeacherClient]:
    """The client (endpoint and key from the environment), the embedded server if needed, a progress artifact."""
    embedded = cfg.model == SMOLLM2
    server = EmbeddedTeacher(cfg.model) if embedded else contextlib.nullcontext()
    with server, TeacherClient(cfg, on_progress=_progress_artifact(key),
                               before_send=server.ensure if embedded else None) as client:
        yield client


def _progress_artifact(key: str) -> Callable[[Progress], None] | None:
    """Updates one Prefect progress artifact per task run; None outside a run (tests calling `.fn`)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return None
    artifact_id = create_progress_artifact(0.0, key=f"teacher-{key}".lower().replace("_", "-"),
                                           description="teacher requests")

    def update(progress: Progress) -> None:
        percent = 100.0 * progress.done / progress.total if progress.total else 100.0
        update_progress_artifact(artifact_id, percent, description=progress.line())

    return update
