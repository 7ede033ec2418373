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

from kd_bundle.data.parsing import parse_bundles
from kd_bundle.teacher import (
    ClientSettings,
    RequestCache,
    TeacherClient,
    TeacherConfig,
    TeacherError,
    TeacherTruncated,
    TeacherUnavailable,
    detection_format,
    export_usage,
    request_cache_path,
    request_timeout_s,
)
from tests.kd_bundle.openai_stub import (  # noqa: F401  (fixtures are used by name)
    DROP,
    EMPTY,
    HONOUR,
    HTML,
    NO_CHOICES,
    REJECT,
    SECRET_KEY,
    STRICT,
    TRUNCATED,
    StubOpenAI,
    electronic_sessions,
    strict_mode_problem,
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
    from kd_bundle.knowledge.rules import RuleConfig, distill_rules
    from kd_bundle.data.sessions import load_sessions
    from kd_bundle.teacher import ClientSettings, TeacherClient, TeacherConfig
    sessions = load_sessions(DataConfig(domain="electronic", max_train_sessions=4, max_test_sessions=1), settings().data_root)
    client = TeacherClient(TeacherConfig(model="stub-teacher", max_tokens=64), ClientSettings(max_concurrency=1))
    distill_rules(sessions, "electronic", RuleConfig(), client)
    """
)


def test_a_killed_run_resumes_by_sending_exactly_the_missing_requests(stub, electronic_sessions, teacher_env):
    from kd_bundle.knowledge.rules import RuleConfig, distill_rules

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
    from kd_bundle.teacher.server import embedded_teacher, is_listening, server_info

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv("KD_TEACHER_BASE_URL", base_url)
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "1")
    from kd_bundle.teacher import server as teacher_server

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


# ---- structured output (issue 9) -------------------------------------------------------------------------------
DETECT = [{"role": "user", "content": "A bundle can be ... detect bundles"}]


def test_a_schema_honouring_endpoint_receives_the_schema_and_its_answer_parses(stub):
    stub.schemas = HONOUR
    with TeacherClient(CFG) as client:
        completion = client.complete(DETECT, response_format=detection_format(6))
    sent = stub.response_formats[0]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    enum = sent["json_schema"]["schema"]["properties"]["bundle1"]["items"]["enum"]
    assert enum == [f"product{p}" for p in range(1, 7)]
    assert completion.structured and not completion.truncated
    assert parse_bundles(completion.text, 6).bundles == [[1, 2]]


def test_response_format_is_part_of_the_cache_key(stub):
    stub.schemas = HONOUR
    with TeacherClient(CFG) as client:
        plain = client.complete(DETECT)
        six = client.complete(DETECT, response_format=detection_format(6))
        four = client.complete(DETECT, response_format=detection_format(4))
        again = client.complete(DETECT, response_format=detection_format(6))
    assert not plain.from_cache and not six.from_cache and not four.from_cache and again.from_cache
    assert len({plain.request_key, six.request_key, four.request_key}) == 3 and again.request_key == six.request_key
    assert stub.attempts == 3


def test_an_endpoint_that_rejects_schemas_is_asked_once_then_in_plain_text(teacher_env, monkeypatch, caplog):
    with StubOpenAI(lambda messages: "{'bundle1': ['product1', 'product3']}") as server:
        server.schemas = REJECT
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            answers = client.map(
                lambda n: client.complete([{"role": "user", "content": f"detect {n}"}], response_format=detection_format(4)),
                list(range(5)))
            assert not client.accepts_response_format()
        with TeacherClient(CFG) as another:  # a second client (a second task) does not ask again
            another.complete([{"role": "user", "content": "detect 9"}], response_format=detection_format(4))
    assert all(parse_bundles(a.text, 4).bundles == [[1, 3]] and not a.structured for a in answers)
    rejected = [f for f in server.response_formats if f is not None]
    # the first request (and one already in flight on the 2nd thread) asked with the full schema, then the portable
    assert 2 <= len(rejected) <= 4 and any(strict_mode_problem(f["json_schema"]["schema"]) is None for f in rejected)
    assert server.attempts == 6 + len(rejected) and len(server.answered) == 6
    warnings = [r.getMessage() for r in caplog.records if "does not accept response_format" in r.getMessage()]
    assert len(warnings) == 1 and server.base_url in warnings[0] and "falling back to plain text" in warnings[0]


def test_a_strict_mode_endpoint_gets_the_portable_schema_after_one_refusal(teacher_env, monkeypatch, caplog):
    with StubOpenAI(lambda messages: "not used: the schema answers") as server:
        server.schemas = STRICT  # OpenAI: the full schema is refused, its strict-mode subset is honoured
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            answers = [client.complete([{"role": "user", "content": f"detect {n}"}],
                                       response_format=detection_format(4)) for n in range(3)]
            assert client.accepts_response_format()
    assert all(a.structured and parse_bundles(a.text, 4).bundles == [[1, 2]] for a in answers)
    sent = [f["json_schema"]["schema"] for f in server.response_formats]
    assert len(sent) == 4 and "minItems" in sent[0]["properties"]["bundle1"]  # the full schema, once
    assert all(strict_mode_problem(schema) is None for schema in sent[1:])
    warnings = [r.getMessage() for r in caplog.records if "refused the full answer schema" in r.getMessage()]
    assert len(warnings) == 1 and server.base_url in warnings[0]


def test_a_fallback_answer_is_cached_under_the_plain_request(teacher_env, monkeypatch):
    with StubOpenAI(lambda messages: "{'bundle1': ['product1', 'product2']}") as server:
        server.schemas = REJECT
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            first = client.complete(DETECT, response_format=detection_format(3))
            assert client.complete(DETECT).request_key == first.request_key  # the plain request: a cache hit
        assert len(server.answered) == 1


# ---- malformed success replies and truncation (issue 12) ---------------------------------------------------------
@pytest.mark.parametrize("fault, says", [(HTML, "not JSON (HTTP 200, text/html)"), (NO_CHOICES, "no choices"),
                                         (EMPTY, "empty answer")])
def test_a_malformed_success_reply_is_retried_then_one_line_and_never_cached(stub, monkeypatch, fault, says):
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "2")
    stub.always_fail = fault
    with TeacherClient(CFG) as client, pytest.raises(TeacherUnavailable) as raised:
        _ask(client, "detect")
    message = str(raised.value)
    assert says in message and stub.base_url in message and "\n" not in message and SECRET_KEY not in message
    assert stub.attempts == 3
    assert len(RequestCache(request_cache_path())) == 0
    stub.always_fail = None  # the endpoint is fixed: the rerun sends the request and gets the answer
    with TeacherClient(CFG) as client:
        again = client.complete([{"role": "user", "content": "detect"}])
    assert not again.from_cache and "bundle1" in again.text and stub.attempts == 4


def test_a_malformed_reply_between_good_ones_costs_one_retry(stub):
    stub.faults = [HTML, NO_CHOICES, EMPTY]
    with TeacherClient(CFG) as client:
        assert "bundle1" in _ask(client, "detect")
    assert stub.attempts == 4 and len(stub.answered) == 2  # EMPTY is an HTTP 200 the stub counts as answered


def test_a_truncated_answer_is_recorded_and_returned_only_where_a_cut_answer_is_acceptable(stub):
    stub.faults = [TRUNCATED]
    with TeacherClient(CFG) as client:
        cut = client.complete([{"role": "user", "content": "summarise"}])
        assert cut.truncated and cut.finish_reason == "length" and client.progress().truncated == 1
    assert len(RequestCache(request_cache_path())) == 1  # a caller that accepts a cut answer gets it cached, flagged


def test_a_truncated_detection_raises_is_counted_and_is_not_cached(stub, monkeypatch):
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "3")
    stub.faults = [TRUNCATED]
    with TeacherClient(CFG) as client:  # greedy: the same cut answer again would only pay twice
        with pytest.raises(TeacherTruncated, match=f"{stub.base_url}.*max_tokens=64") as raised:
            client.complete(DETECT, require_full=True)
        assert raised.value.completion.truncated and client.progress().truncated == 1
    assert stub.attempts == 1 and len(RequestCache(request_cache_path())) == 0
    with TeacherClient(CFG.model_copy(update={"temperature": 0.7})) as sampling:  # sampling: another try may finish
        stub.faults = [TRUNCATED]
        assert not sampling.complete(DETECT, require_full=True).truncated
    assert stub.attempts == 3


def test_an_answer_that_spends_the_whole_budget_is_cut_whatever_finish_reason_says(teacher_env, monkeypatch):
    """llm-katan answers finish_reason "stop" for an answer it cut at max_tokens."""
    with StubOpenAI(lambda messages: "one two three") as server:  # the stub counts words as tokens
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG.model_copy(update={"max_tokens": 3})) as client:
            cut = client.complete(DETECT)
            assert cut.truncated and cut.finish_reason == "stop"
            assert client.complete(DETECT).truncated  # from the cache, still flagged
            with pytest.raises(TeacherTruncated, match="'stop', 3 tokens"):
                client.complete(DETECT, require_full=True)
            assert not client.complete(DETECT, max_tokens=4).truncated


def test_the_default_time_out_is_minutes_sized_to_the_answer_budget(stub, monkeypatch):
    assert 60 < request_timeout_s(256) < request_timeout_s(512) <= 300  # minutes, not the old 600 s
    monkeypatch.delenv("KD_TEACHER_TIMEOUT_S")
    assert ClientSettings().timeout_s is None
    with TeacherClient(CFG) as client:
        assert client._client().timeout == request_timeout_s(CFG.max_tokens)


def test_a_hung_request_times_out_and_is_retried(stub, monkeypatch):
    monkeypatch.setenv("KD_TEACHER_TIMEOUT_S", "0.3")
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "1")
    stub.latency_s = 1.0
    with TeacherClient(CFG) as client, pytest.raises(TeacherUnavailable, match=f"{stub.base_url}.*APITimeoutError"):
        _ask(client, "x")
    assert stub.attempts == 2


def test_a_silent_endpoint_is_named_in_a_warning(stub, monkeypatch, caplog):
    monkeypatch.setenv("KD_TEACHER_STALL_WARNING_S", "1")
    stub.latency_s = 2.5
    with TeacherClient(CFG, ClientSettings(max_concurrency=1)) as client:
        client.map(lambda word: _ask(client, word), ["slow"])
    warnings = [r.getMessage() for r in caplog.records if "no answer for" in r.getMessage()]
    assert warnings and stub.base_url in warnings[0] and "0/1 done" in warnings[0]


def test_an_empty_answer_an_older_client_cached_is_asked_again(stub):
    """Before this fix a 200 without choices was cached as an empty answer, and every rerun repeated the failure."""
    from kd_bundle.teacher import request_key

    messages = [{"role": "user", "content": "detect"}]
    cache = RequestCache(request_cache_path())
    cache.put(request_key(CFG.model, messages, CFG.generation()), {"text": "", "finish_reason": None})
    cache.close()
    with TeacherClient(CFG) as client:
        answer = client.complete(messages)
        assert not answer.from_cache and "bundle1" in answer.text
        assert client.complete(messages).from_cache
    assert stub.attempts == 1


def test_usage_of_some_keys_reads_exactly_those_rows_past_sqlite_parameter_limits(tmp_path):
    cache = RequestCache(tmp_path / "requests.sqlite")
    try:
        for n in range(1200):
            cache.put(f"k{n}", {"model": "m", "prompt_tokens": n, "completion_tokens": 1, "answered_at": float(n)})
        wanted = [f"k{n}" for n in range(0, 1200, 2)] + ["k0", "absent"]  # 600 keys, a repeat, an unknown one
        usage = cache.usage(wanted)
        assert sorted(usage["request_key"]) == sorted(set(wanted) - {"absent"})
        assert usage["prompt_tokens"].sum() == sum(range(0, 1200, 2)) and cache.usage().height == 1200
        assert cache.usage([f"k{n}" for n in range(1000)]).height == 1000  # more keys than one query binds
    finally:
        cache.close()
