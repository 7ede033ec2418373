"""Teacher tasks: thin wrappers that write refs; stable content hashes across reruns; cached under Prefect."""

from __future__ import annotations

from kd_bundle.config import DataConfig, settings
from kd_bundle.data.sessions import load_sessions
from kd_bundle.evaluation.teacher_baseline import TeacherPredictConfig
from kd_bundle.knowledge.rules import RuleConfig
from kd_bundle.knowledge.thoughts import ThoughtConfig
from kd_bundle.store import read_artifact, write_artifact
from kd_bundle.teacher import TeacherConfig
from tasks.evaluation import teacher_predict
from tasks.knowledge import distill_rules, distill_thoughts
from tests.kd_bundle.openai_stub import stub, teacher_env  # noqa: F401

TEACHER = TeacherConfig(model="stub-teacher", max_tokens=64)


def test_teacher_tasks_write_refs_and_rerun_for_free(stub):
    frame = load_sessions(DataConfig(domain="electronic", max_train_sessions=3, max_test_sessions=2), settings().data_root)
    sessions = write_artifact(frame, "sessions")
    rules = distill_rules.fn(sessions, "electronic", RuleConfig(), TEACHER)
    thoughts = distill_thoughts.fn(sessions, "electronic", ThoughtConfig(), TEACHER)
    predicted = teacher_predict.fn(sessions, TeacherPredictConfig(), TEACHER)
    assert rules.session_rules.rows == 3 and rules.rules.rows >= 1 and thoughts.thoughts.rows == 3
    assert predicted.predictions.rows == 2 and predicted.tokens > 0
    assert read_artifact(rules.usage)["from_cache"].not_().all()
    paid = stub.attempts

    again = distill_rules.fn(sessions, "electronic", RuleConfig(), TEACHER)
    assert stub.attempts == paid  # the request cache answers everything
    assert again.session_rules == rules.session_rules and again.rules == rules.rules  # same content, same hash
    assert read_artifact(again.usage)["from_cache"].all()
    assert teacher_predict.fn(sessions, TeacherPredictConfig(), TEACHER).predictions == predicted.predictions


def test_under_prefect_an_always_failing_endpoint_gets_only_the_clients_retries(stub, monkeypatch, tmp_path):
    """One retry layer: Prefect's task retries on top of the client's multiplied the requests (3 x 2 x 6 = 36)."""
    from prefect import flow
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "1")
    stub.always_fail = 500
    data = DataConfig(domain="electronic", max_train_sessions=1, max_test_sessions=2)
    sessions = write_artifact(load_sessions(data, settings().data_root), "sessions")

    @flow
    def predict(sessions_ref):
        return teacher_predict(sessions_ref, TeacherPredictConfig(intents=False), TEACHER)

    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        state = predict(sessions, return_state=True)
    assert state.is_failed()
    assert stub.distinct_requests() == 2  # two test sessions, sent side by side (2 threads)
    assert stub.attempts == (1 + 1) * 2
