"""Flow tests run against a real (temporary) Prefect API server with an isolated store and result storage."""

from __future__ import annotations

import os
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.pipeline import PipelineConfig
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.retrieval import RetrievalConfig
from kd_bundle.student.training import SMOKE
from kd_bundle.teacher import TeacherConfig
from tests.kd_bundle.openai_stub import StubOpenAI, bundle_teacher
from tests.kd_bundle.tiny_student import build_tiny_student

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(autouse=True, scope="session")
def prefect_harness():
    # Heartbeats cost ~1 s per flow at exit; they only feed zombie detection, which tests do not need.
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("KD_RESULTS_DIR", str(tmp_path / "published"))
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        yield tmp_path


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """A loopback stub teacher and a tiny random Llama student over 12 train / 4 test sessions per domain."""
    with StubOpenAI(bundle_teacher) as teacher:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", teacher.base_url)
        monkeypatch.setenv("KD_TEACHER_API_KEY", "test-key")
        student = StudentConfig(model=str(build_tiny_student(tmp_path / "tiny")), max_new_tokens=64, batch_size=4)
        yield teacher, PipelineConfig(
            max_train_sessions=12, max_test_sessions=4, teacher=TeacherConfig(model="stub-teacher"),
            retrieval=RetrievalConfig(method="tfidf", k=3, tfidf_features=256), student=student, sft=SMOKE,
        )


def task_states(flow_run_id, expected: int | None = None, timeout: float = 30) -> dict[str, list[str]]:
    """Task-run name -> state names, read back from the API.

    Task runs reach the API through an event stream, a moment after the flow returns: poll until `expected`
    runs (or, without it, the same number twice in a row) are there and all of them are final.
    """
    deadline, previous = time.monotonic() + timeout, -1
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        settled = all(run.state_type is not None and run.state_type.value in FINAL for run in runs)
        done = len(runs) == expected if expected is not None else len(runs) == previous
        if (done and settled) or time.monotonic() > deadline:
            break
        previous = len(runs)
        time.sleep(0.5)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name, []).append(run.state_name)
    return states
