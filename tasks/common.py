"""Project defaults for every stage task: content-hash caching, JSON results, one lock per cache key.

A stage's cache key = its inputs (ArtifactRefs carry content hashes; configs are frozen pydantic models)
+ the task's own source + the source of the library modules it calls. Paths and clocks never enter it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import Task, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.futures import PrefectFuture
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from kd_bundle.store import ArtifactRef, is_sound, quarantine
from tasks.locks import StoreLockManager


@dataclass
class LibraryCode(CachePolicy):
    """Hash of the source of the kd_bundle modules a task calls: editing `metrics.py` re-scores, nothing else."""

    modules: tuple[str, ...] = field(default_factory=tuple)

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        sources = [inspect.getsource(importlib.import_module(name)) for name in self.modules]
        return hash_objects(*sources, raise_on_failure=True)


@dataclass
class SourceFiles(CachePolicy):
    """Hash of the bytes of raw input files named by a task's inputs (the real datasets): content, not path."""

    finder: Callable[[dict[str, Any]], list[Path]] = field(default=lambda inputs: [])

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.finder(inputs)):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()


def content_policy(*modules: str, inputs: CachePolicy = INPUTS) -> CachePolicy:
    """INPUTS + TASK_SOURCE + library code; SERIALIZABLE so two runs of one key compute it once."""
    policy = inputs + TASK_SOURCE + LibraryCode(modules=tuple(f"kd_bundle.{m}" for m in modules))
    return policy.configure(isolation_level="SERIALIZABLE", lock_manager=StoreLockManager())


def stage_task(*modules: str, inputs: CachePolicy = INPUTS, **options: Any) -> Callable[[Callable], "Stage"]:
    """Decorator for one pipeline stage: `@stage_task("patterns")` over a function returning ArtifactRefs."""

    def wrap(fn: Callable) -> Stage:
        return Stage(
            task(
                fn,
                cache_policy=content_policy(*modules, inputs=inputs),
                persist_result=True,
                result_serializer="json",
                **options,
            )
        )

    return wrap


_SUBMIT = ContextVar("kd_bundle_submit_stages", default=False)


@contextmanager
def submitted_stages(enabled: bool = True) -> Iterator[None]:
    """Inside, calling a Stage submits it to the flow's task runner (Dask: other processes or machines) and
    returns a PrefectFuture; futures passed to later stages are their upstream dependencies."""
    token = _SUBMIT.set(enabled)
    try:
        yield
    finally:
        _SUBMIT.reset(token)


def resolved(value: Any) -> Any:
    """The result behind a PrefectFuture (waiting for it), or the value itself."""
    return value.result() if isinstance(value, PrefectFuture) else value


class Stage:
    """A Prefect task that never hands back a stale reference.

    Prefect caches the small ArtifactRef a task returned, but cannot know that the Parquet file it points to
    was deleted or damaged since. Calling a Stage checks every ref in the result (`is_sound`: its bytes still hash
    to its name) and, when one is not, quarantines it and recomputes the task, refreshing its cache record.
    Under `submitted_stages()` the same check runs on the worker: what is submitted is a small uncached task,
    `<stage>/checked`, that calls the stage in the worker's process exactly as an in-process flow does, so Dask and
    in-process runs heal alike. `.fn` and `.task` stay available for tests.
    """

    def __init__(self, prefect_task: Task):
        self.task = prefect_task
        self.fn = prefect_task.fn
        self.name = prefect_task.name
        # Not cached and not persisted: the stage inside it owns the cache record; this only carries its result.
        self.checked = task(self.run_checked, name=f"{self.name}/checked", cache_policy=NO_CACHE, persist_result=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _SUBMIT.get():
            return self.checked.submit(*args, **kwargs)
        return self.run_checked(*args, **kwargs)

    def run_checked(self, *args: Any, **kwargs: Any) -> Any:
        result = self.task(*args, **kwargs)
        unsound = [ref for ref in artifact_refs(result) if not is_sound(ref)]
        for ref in unsound:
            quarantine(ref, made_by=self.name)
        if unsound:
            result = self.task.with_options(refresh_cache=True)(*args, **kwargs)
        return result

    def with_options(self, **options: Any) -> "Stage":
        return Stage(self.task.with_options(**options))


def artifact_refs(value: Any) -> list[ArtifactRef]:
    """Every ArtifactRef inside a task result (a ref, a pydantic model of refs, a list or dict of them)."""
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, BaseModel):
        return [r for v in value.__dict__.values() for r in artifact_refs(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in artifact_refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in artifact_refs(v)]
    return []


teacher_task = partial(stage_task, retries=2, retry_delay_seconds=[5, 30])
