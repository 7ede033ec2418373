"""`python -m kd_bundle distill ...` and `teacher-server`, against a loopback stub; the real SmolLM2 run is slow."""

from __future__ import annotations

import socket

import pytest

from kd_bundle.__main__ import main
from tests.kd_bundle.openai_stub import HTML, SECRET_KEY, electronic_sessions, stub, teacher_env  # noqa: F401


def test_distill_commands_run_and_a_rerun_sends_nothing(stub, capsys):
    args = ["--domain", "electronic", "--max-train-sessions", "2", "--max-test-sessions", "2", "--model", "stub-teacher",
            "--no-server"]
    assert main(["distill", "rules", *args]) == 0
    assert main(["distill", "thoughts", *args]) == 0
    assert main(["distill", "baseline", *args, "--with-rules"]) == 0
    out = capsys.readouterr().out
    assert "session_rules:" in out and "thoughts:" in out and "| teacher |" in out
    paid = stub.attempts
    assert main(["distill", "rules", *args]) == 0
    assert stub.attempts == paid and "(0 sent, " in capsys.readouterr().out
    assert main(["teacher-server", "usage"]) == 0
    assert f"{paid} answered requests" in capsys.readouterr().out


def test_distill_against_a_refused_endpoint_fails_in_one_line(teacher_env, monkeypatch, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KD_TEACHER_BASE_URL", f"http://127.0.0.1:{port}/v1")
    args = ["--domain", "electronic", "--max-train-sessions", "2", "--model", "stub-teacher", "--no-server"]
    assert main(["distill", "rules", *args]) == 2
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/v1" in err and "rerun to resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_real_smollm2_teacher_through_the_embedded_server(teacher_env, electronic_sessions, monkeypatch):
    """The real path: llm-katan's transformers backend serving the converted SmolLM2 folder (~1 min on 2 cores)."""
    from kd_bundle.knowledge.rules import RuleConfig, distill_rules
    from kd_bundle.teacher import TeacherClient, TeacherConfig
    from kd_bundle.teacher.server import embedded_teacher, is_listening

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KD_TEACHER_BASE_URL", f"http://127.0.0.1:{port}/v1")
    sessions = electronic_sessions.head(0).vstack(electronic_sessions.filter(electronic_sessions["split"] == "train").head(1))
    with embedded_teacher("smollm2"), TeacherClient(TeacherConfig(max_tokens=32)) as client:
        session_rules, _ = distill_rules(sessions, "electronic", RuleConfig(feedback_rounds=1), client)
        assert client.progress().sent >= 2
    assert not is_listening("127.0.0.1", port)
    assert session_rules.height == 1 and session_rules["summary"][0]  # weak knowledge, real path


def test_distill_against_a_login_page_fails_in_one_line_naming_the_endpoint(stub, monkeypatch, capsys):
    """A proxy or a wrong URL answers HTTP 200 with HTML: retried, then one line, exit 2, nothing cached."""
    monkeypatch.setenv("KD_TEACHER_MAX_RETRIES", "1")
    stub.always_fail = HTML
    args = ["--domain", "electronic", "--max-train-sessions", "2", "--model", "stub-teacher", "--no-server",
            "--concurrency", "1"]
    assert main(["distill", "rules", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and stub.base_url in lines[0] and "not JSON" in lines[0] and "text/html" in lines[0]
    assert "Traceback" not in err and SECRET_KEY not in err
    assert stub.attempts == 2  # the first request, retried once; nothing after it was sent
    stub.always_fail = None
    assert main(["distill", "rules", *args]) == 0  # the endpoint is fixed: nothing was cached, everything is sent
    assert len(stub.answered) == stub.attempts - 2 > 0
