"""The teacher client against real OpenAI-compatible servers on 127.0.0.1 (no mocks of the openai client)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import polars as pl
import pytest

from kd_bundle.teacher import (
    ClientSettings,
    RequestCache,
    TeacherClient,
    TeacherConfig,
    TeacherError,
    TeacherUnavailable,
    export_usage,
    request_cache_path,
)
from tests.kd_bundle.openai_stub import (  # noqa: F401  (fixtures are used by name)
    DROP,
    SECRET_KEY,
    StubOpenAI,
    electronic_sessions,
    stub,
    teacher_env,
)

CFG = TeacherConfig(model="stub-teacher", max_tokens=64)


def _ask(client: TeacherClient, text: str) -> str:
    return client.complete([{"role": "user", "content": text}]).text


def test_every_answer_is_cached_durably_and_never_paid_twice(stub):
    with TeacherClient(CFG) as client:
        first = client.complete([{"role": "user", "content": "hello"}])
        assert not first.from_cache and first.text
        assert client.complete([{"role": "user", "content": "hello"}]).from_cache
    with TeacherClient(CFG) as fresh:  # a new process would see the same file
        again = fresh.complete([{"role": "user", "content": "hello"}])
    assert again.from_cache and again.text == first.text and again.prompt_tokens == first.prompt_tokens
    assert stub.attempts == 1
    with TeacherClient(CFG.model_copy(update={"temperature": 0.5})) as other_settings:
        _ask(other_settings, "hello")  # other generation settings: another request
    assert stub.attempts == 2


def test_transient_failures_are_retried_until_an_answer_arrives(stub):
    stub.faults = [500, 429, DROP, 503]
    stub.retry_after = "0"
    with TeacherClient(CFG) as client:
        assert "bundle1" in _ask(client, "detect")
    assert stub.attempts == 5 and len(stub.answered) == 1


def test_spent_retries_give_a_clear_error_and_keep_earlier_answers(stub, monkeypatch, caplog):
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "2")
    with TeacherClient(CFG) as client:
        _ask(client, "paid for")
        stub.always_fail = 500
        with pytest.raises(TeacherUnavailable) as raised:
            _ask(client, "never answered")
    message = str(raised.value)
    assert stub.base_url in message and "stub-teacher" in message and "failed 3 time(s)" in message
    assert stub.attempts == 1 + 3
    assert "retry 1/2" in caplog.text
    stub.always_fail = None
    with TeacherClient(CFG) as client:
        assert client.complete([{"role": "user", "content": "paid for"}]).from_cache
    assert SECRET_KEY not in message + caplog.text


def test_rate_limit_429_forever_gives_a_clear_error(stub, monkeypatch):
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "1")
    stub.always_fail = 429
    with TeacherClient(CFG) as client, pytest.raises(TeacherUnavailable, match="HTTP 429"):
        _ask(client, "x")
    assert stub.attempts == 2


def test_refused_connection_names_the_endpoint(teacher_env, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("KD_TEACHER_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "2")
    with TeacherClient(CFG) as client, pytest.raises(TeacherUnavailable, match=f"127.0.0.1:{port}/v1.*APIConnectionError"):
        _ask(client, "x")


def test_a_rejected_request_is_not_retried(stub):
    stub.faults = [404]
    with TeacherClient(CFG) as client, pytest.raises(TeacherError, match="HTTP 404") as raised:
        _ask(client, "x")
    assert not isinstance(raised.value, TeacherUnavailable)
    assert stub.attempts == 1


def test_concurrency_is_bounded_and_results_keep_their_order(teacher_env, monkeypatch):
    with StubOpenAI(lambda messages: messages[-1]["content"].upper(), latency_s=0.05) as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG, ClientSettings(max_concurrency=3)) as client:
            answers = client.map(lambda word: _ask(client, word), [f"w{i}" for i in range(12)])
    assert answers == [f"W{i}" for i in range(12)]
    assert 2 <= server.max_inflight <= 3


def test_usage_is_recorded_per_request_with_cost_and_exports_to_parquet(stub, monkeypatch, tmp_path):
    monkeypatch.setenv("KD_TEACHER_PRICE_PER_1K_PROMPT_TOKENS", "1.0")
    monkeypatch.setenv("KD_TEACHER_PRICE_PER_1K_COMPLETION_TOKENS", "2.0")
    with TeacherClient(CFG) as client:
        _ask(client, "one two three")
        _ask(client, "four")
        _ask(client, "one two three")
        usage = client.usage_frame()
    assert usage.height == 2 and usage["from_cache"].to_list() == [False, False]
    row = usage.row(0, named=True)
    assert row["prompt_tokens"] == 3 and row["cost"] == pytest.approx((3 * 1.0 + row["completion_tokens"] * 2.0) / 1000)
    assert row["endpoint"] == stub.base_url and row["model"] == "stub-teacher"
    usage.write_parquet(tmp_path / "usage.parquet")
    assert pl.read_parquet(tmp_path / "usage.parquet").height == 2
    assert export_usage().height == 2


def test_the_api_key_is_sent_but_never_stored(stub, teacher_env):
    with TeacherClient(CFG) as client:
        _ask(client, "x")
    assert stub.headers[0]["authorization"] == f"Bearer {SECRET_KEY}"
    for path in teacher_env.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


_KILLABLE_RUN = textwrap.dedent(
    """
    import sys
    from kd_bundle.config import DataConfig, settings
    from kd_bundle.rules import RuleConfig, distill_rules
    from kd_bundle.sessions import load_sessions
    from kd_bundle.teacher import ClientSettings, TeacherClient, TeacherConfig
    sessions = load_sessions(DataConfig(domain="electronic", max_train_sessions=4, max_test_sessions=1), settings().data_root)
    client = TeacherClient(TeacherConfig(model="stub-teacher", max_tokens=64), ClientSettings(max_concurrency=1))
    distill_rules(sessions, "electronic", RuleConfig(), client)
    """
)


def test_a_killed_run_resumes_by_sending_exactly_the_missing_requests(stub, electronic_sessions, teacher_env):
    from kd_bundle.rules import RuleConfig, distill_rules

    stub.hold_after = 5  # answer 5 requests, then hold the 6th until the client is dead
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN], env=env)
    try:
        assert stub.held.wait(60), "the run never reached its 6th request"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed_answers = stub.answered_keys(CFG.model, CFG.generation())
    assert len(killed_answers) == 5
    cache = RequestCache(request_cache_path(teacher_env))
    assert len(cache) == 5  # every answer that arrived was on disk before the next request left
    cache.close()

    stub.hold_after, stub.answered, stub.attempts = None, [], 0
    stub.release.set()
    with TeacherClient(CFG) as client:
        session_rules, _ = distill_rules(electronic_sessions, "electronic", RuleConfig(), client)
        progress = client.progress()
    resent = stub.answered_keys(CFG.model, CFG.generation())
    assert progress.cached == 5 and progress.sent == stub.attempts == len(resent)
    assert resent.isdisjoint(killed_answers)
    assert session_rules.height == 4

    stub.attempts = 0
    with TeacherClient(CFG) as client:  # a third run pays nothing
        distill_rules(electronic_sessions, "electronic", RuleConfig(), client)
    assert stub.attempts == 0


def test_embedded_llm_katan_server_starts_answers_and_stops(teacher_env, monkeypatch):
    """The embedded-server path end to end with llm-katan's echo backend (no weights), rate limit after 2."""
    from kd_bundle.teacher_server import embedded_teacher, is_listening, server_info

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv("KD_TEACHER_BASE_URL", base_url)
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "1")
    from kd_bundle import teacher_server

    info = teacher_server.start_server("echo-teacher", backend="echo", extra_args=["--rate-limit-after", "2"])
    try:
        assert server_info(port).pid == info.pid and is_listening("127.0.0.1", port)
        cfg = TeacherConfig(model="echo-teacher", max_tokens=16)
        with TeacherClient(cfg) as client:
            assert "[echo] model=echo-teacher" in _ask(client, "first")
            _ask(client, "second")
            with pytest.raises(TeacherUnavailable, match=f"127.0.0.1:{port}.*HTTP 429"):
                _ask(client, "third")
            assert client.complete([{"role": "user", "content": "first"}]).from_cache
    finally:
        assert teacher_server.stop_server(port)
    assert not is_listening("127.0.0.1", port) and server_info(port) is None
    with embedded_teacher("echo-teacher", base_url, backend="echo") as started_info:  # starts and stops by itself
        assert started_info is not None and is_listening("127.0.0.1", port)
    assert not is_listening("127.0.0.1", port)


def test_progress_is_logged(stub, caplog):
    caplog.set_level(logging.INFO, logger="kd_bundle.teacher")
    with TeacherClient(CFG) as client:
        client.map(lambda word: _ask(client, word), ["a", "b"], label="words")
    assert "teacher words: 2/2 done, 2 requests (2 sent, 0 cached)" in caplog.text


def test_map_stops_on_the_first_error_and_keeps_what_was_answered(stub, monkeypatch):
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "0")
    stub.faults = [None, 500]  # the second request fails for good

    def ask(word: str) -> str:
        return _ask(client, word)

    with TeacherClient(CFG, ClientSettings(max_concurrency=1)) as client:
        with pytest.raises(TeacherUnavailable):
            client.map(ask, ["a", "b", "c", "d"])
        assert stub.attempts == 2  # "c" and "d" never started
        assert client.complete([{"role": "user", "content": "a"}]).from_cache
