"""How a teacher stage talks to the teacher: the shared client context and cache-key modules of the stages that call
it (rules and thoughts in tasks/knowledge.py, the teacher baseline in tasks/evaluation.py), cached on content.

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

from kd_bundle.models import SMOLLM2
from kd_bundle.teacher import Progress, TeacherClient, TeacherConfig
from kd_bundle.teacher.server import EmbeddedTeacher

TEACHER_LIBRARY = ("teacher", "teacher.config", "teacher.client", "teacher.reply", "teacher.pool", "teacher.progress",
                   "teacher.request_cache", "teacher.cache_salvage", "teacher.answer_schema", "data.parsing",
                   "data.prompts")
NO_TASK_RETRIES = {"retries": 0, "retry_delay_seconds": 0}  # replaces teacher_task's; see the module docstring


@contextlib.contextmanager
def teacher_client(cfg: TeacherConfig, key: str) -> Iterator[TeacherClient]:
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
