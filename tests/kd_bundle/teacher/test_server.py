"""Server lifecycle: a run's server dies with the run (kill -9 included), a user's detached server outlives the CLI,
and a pid file is trusted only while it names our live server. llm-katan's echo backend (no weights) stands in for
the model: the lifecycle code is the same for every backend."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_bundle.teacher import server as teacher_server
from kd_bundle.teacher.server import ServerInfo, embedded_teacher, is_listening, running_server, server_info

ROOT = Path(__file__).resolve().parents[3]

# Started in a child python: the server is started from a worker thread that then exits (as a run's client threads
# do), the child says where it is, and waits to be killed.
OWNER = """
import sys, threading, time
from kd_bundle.teacher import server as teacher_server
port = int(sys.argv[1])
started = []
worker = threading.Thread(target=lambda: started.append(teacher_server.start_server("echo", backend="echo", port=port)))
worker.start(); worker.join()
time.sleep(1.0)  # the starting thread is gone: the server must still be up
print(started[0].pid, teacher_server.is_listening("127.0.0.1", port), flush=True)
time.sleep(600)
"""


@pytest.fixture
def server_env(tmp_path, monkeypatch):
    """A private store and a free loopback port as the teacher endpoint; returns the port."""
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KD_TEACHER_BASE_URL", f"http://127.0.0.1:{port}/v1")
    yield port
    teacher_server.stop_server(port)


def test_a_run_owned_server_dies_when_its_owner_is_killed_hard(server_env):
    port = server_env
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    group = 0
    try:
        pid, listening = owner.stdout.readline().split()
        group = int(pid)
        assert listening == "True" and len(_members(group)) == 2  # the guard and the server
        assert running_server(port).owner_pid == owner.pid
        owner.send_signal(signal.SIGKILL)  # no handler, no atexit, no finally runs in the owner
        owner.wait()
        deadline = time.monotonic() + 10
        while (_members(group) or is_listening("127.0.0.1", port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _members(group) == [] and not is_listening("127.0.0.1", port)
        assert running_server(port) is None and server_info(port) is None  # the stale pid file is gone too
    finally:
        owner.kill()
        for leftover in _members(group) if group else []:  # never leave a server behind, even when failing
            os.kill(leftover, signal.SIGKILL)


def test_a_detached_server_outlives_the_cli_and_is_reused_not_stopped_by_a_run(server_env):
    port = server_env
    cli = [sys.executable, "-m", "kd_bundle", "teacher-server"]
    started = subprocess.run([*cli, "start", "--backend", "echo", "--served-model-name", "echo"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    detached = running_server(port)
    assert detached is not None and detached.owner_pid is None and is_listening("127.0.0.1", port)
    with embedded_teacher("echo", backend="echo") as used:  # a run finds it and uses it as it is
        assert used == detached
    assert is_listening("127.0.0.1", port)  # the run did not stop what it did not start
    assert "running:" in subprocess.run([*cli, "status"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert subprocess.run([*cli, "stop"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip() == "stopped"
    assert not is_listening("127.0.0.1", port) and server_info(port) is None


def test_a_stale_pid_file_is_replaced_and_its_pid_never_signalled(server_env):
    port = server_env
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)  # alive, but not our server
    try:
        stale = ServerInfo(bystander.pid, "127.0.0.1", port, "m", "echo", "echo", "/dev/null", None)
        teacher_server._info_file(port, None).parent.mkdir(parents=True)
        teacher_server._info_file(port, None).write_text(json.dumps(stale.__dict__))
        assert server_info(port) == stale and running_server(port) is None and server_info(port) is None
        teacher_server._info_file(port, None).write_text(json.dumps(stale.__dict__))
        assert teacher_server.stop_server(port) is False
        assert bystander.poll() is None  # its process group was not signalled
        teacher_server._info_file(port, None).write_text(json.dumps(stale.__dict__))
        with embedded_teacher("echo", backend="echo") as fresh:  # the run starts its own and records it
            assert fresh.pid != bystander.pid and server_info(port) == fresh and is_listening("127.0.0.1", port)
        assert not is_listening("127.0.0.1", port) and server_info(port) is None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _members(group: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_an_adopted_process_dies_when_its_owner_is_killed_hard():
    """`guard_pid`: for a server a library starts (Prefect's temporary API server), not kd-bundle."""
    owner_code = ("import subprocess, sys, time\nfrom kd_bundle.process_guard import guard_pid\n"
                  "server = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
                  "guard_pid(server.pid)\nprint(server.pid, flush=True)\ntime.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", owner_code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    adopted = int(owner.stdout.readline())
    try:
        time.sleep(0.5)
        assert _running(adopted)  # the owner lives: the guard leaves it alone
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while _running(adopted) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(adopted)
    finally:
        owner.kill()
        if _running(adopted):
            os.kill(adopted, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (dead) parent's reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_openai_json_schema_requests_reach_llama_cpp_in_its_own_form():
    """llama-cpp-python 0.3.36 answers OpenAI's `json_schema` form with an error; the layer in front rewrites it."""
    import asyncio

    from kd_bundle.teacher.llama_server import OpenAISchemaForm

    schema = {"type": "object", "properties": {"bundle1": {"type": "array"}}, "required": ["bundle1"]}
    request = {"model": "m", "messages": [], "response_format": {"type": "json_schema",
                                                                  "json_schema": {"name": "b", "schema": schema}}}
    seen = {}

    async def app(scope, receive, send):  # the wrapped server: records what reaches it
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message["body"], message["more_body"]
        seen["body"] = json.loads(body)
        seen["length"] = dict(scope["headers"])[b"content-length"]

    async def call(path: str, body: bytes) -> dict:
        chunks = [{"type": "http.request", "body": body[:10], "more_body": True},
                  {"type": "http.request", "body": body[10:], "more_body": False}]
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"0")]}
        await OpenAISchemaForm(app)(scope, lambda: asyncio.sleep(0, chunks.pop(0)), None)
        return seen["body"]

    body = json.dumps(request).encode()
    assert asyncio.run(call("/v1/chat/completions", body))["response_format"] == {"type": "json_object",
                                                                                 "schema": schema}
    assert int(seen["length"]) == len(json.dumps(seen["body"]).encode())
    plain = dict(request, response_format={"type": "json_object", "schema": schema})
    assert asyncio.run(call("/v1/chat/completions", json.dumps(plain).encode())) == plain  # already its own form
    assert asyncio.run(call("/v1/embeddings", body)) == request  # other paths pass as they are


@pytest.mark.slow
def test_the_embedded_llama_cpp_teacher_holds_answers_to_a_json_schema(server_env):
    """The real server and the shipped SmolLM2 GGUF (~20 s on 2 busy cores): OpenAI's form of a schema is honoured."""
    from openai import OpenAI

    products = {"type": "array", "items": {"type": "string", "enum": ["product1", "product2", "product3"]},
                "minItems": 2}
    schema = {"type": "object", "properties": {"bundle1": products, "bundle2": products}, "required": ["bundle1"],
              "additionalProperties": False}
    prompt = ("product1: Canon EOS 2000D camera body\nproduct2: Canon LP-E10 battery\nproduct3: SanDisk 64GB SD card\n"
              "Which products are bought together? Answer in JSON.")
    with embedded_teacher("smollm2") as info:
        client = OpenAI(base_url=info.base_url, api_key="local", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=64, temperature=0.0,
            response_format={"type": "json_schema", "json_schema": {"name": "bundles", "schema": schema}})
    answer = json.loads(reply.choices[0].message.content)
    assert reply.choices[0].finish_reason == "stop" and set(answer) <= {"bundle1", "bundle2"} and "bundle1" in answer
    assert all(len(b) >= 2 and set(b) <= {"product1", "product2", "product3"} for b in answer.values())
