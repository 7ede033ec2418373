"""The embedded teacher: llm-katan serving SmolLM2-135M-Instruct on 127.0.0.1, OpenAI-compatible.

    python -m kd_bundle teacher-server start     # serves KD_TEACHER_BASE_URL's host:port (default 127.0.0.1:8765)
    python -m kd_bundle teacher-server status
    python -m kd_bundle teacher-server stop

The server runs as a detached process; its pid, port and log live under `<store>/teacher/server/`, so `stop`
ends exactly the process `start` made. `embedded_teacher()` does the same inside a run: it starts the server only
when the endpoint is a loopback address with nothing listening, and stops only what it started; `EmbeddedTeacher`
does so lazily, at the first request that is not already cached. Pointing
KD_TEACHER_BASE_URL at any other endpoint (a hosted GPT model, a vLLM server) bypasses all of this.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from kd_bundle.config import settings

log = logging.getLogger("kd_bundle.teacher")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServerError(RuntimeError):
    """The embedded server could not be started; the message carries the tail of its log."""


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    host: str
    port: int
    model: str
    served_model_name: str
    backend: str
    log_file: str

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
    backend: str = "transformers",
    extra_args: list[str] | None = None,
    ready_timeout_s: float = 300.0,
    root: Path | None = None,
) -> ServerInfo:
    """Start llm-katan detached and wait until /health answers. `model` is resolved by kd_bundle.models
    ('smollm2' = the shipped GGUF converted once to an HF folder); the echo backend needs no weights."""
    default_host, default_port = endpoint_address(settings().teacher_base_url)
    host, port = host or default_host, port or default_port
    if host not in LOOPBACK:
        raise ServerError(f"the embedded teacher serves loopback only; {host} is not a loopback address")
    if is_listening(host, port):
        raise ServerError(f"{host}:{port} is already in use; stop that server or choose another port")
    folder = server_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = model if backend == "echo" else str(_resolve(model))
    log_file = folder / f"llm-katan-{port}.log"
    command = [
        sys.executable, "-m", "llm_katan.cli", "--model", model_path, "--served-model-name", served_model_name,
        "--backend", backend, "--host", host, "--port", str(port), "--stats-file", str(folder / "stats.json"),
        "--disable-dashboard", *(extra_args or []),
    ]
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    info = ServerInfo(process.pid, host, port, model_path, served_model_name, backend, str(log_file))
    _info_file(port, root).write_text(json.dumps(asdict(info)))
    log.info("starting embedded teacher (%s backend, %s) on %s, log %s", backend, served_model_name, info.base_url, log_file)
    try:
        _wait_ready(process, info, ready_timeout_s)
    except BaseException:
        stop_server(port, root=root)
        raise
    log.info("embedded teacher ready on %s (pid %d)", info.base_url, info.pid)
    return info


def stop_server(port: int | None = None, *, root: Path | None = None, timeout_s: float = 20.0) -> bool:
    """Stop the server `start_server` recorded for `port`; True if one was running."""
    port = port or endpoint_address(settings().teacher_base_url)[1]
    info = server_info(port, root)
    if info is None:
        return False
    _info_file(port, root).unlink(missing_ok=True)
    if not _alive(info.pid):
        return False
    os.killpg(info.pid, signal.SIGTERM)  # its own session: the server and nothing else
    deadline = time.monotonic() + timeout_s
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(info.pid):
        os.killpg(info.pid, signal.SIGKILL)
    log.info("embedded teacher on port %d stopped (pid %d)", port, info.pid)
    return True


def server_info(port: int | None = None, root: Path | None = None) -> ServerInfo | None:
    port = port or endpoint_address(settings().teacher_base_url)[1]
    path = _info_file(port, root)
    if not path.exists():
        return None
    return ServerInfo(**json.loads(path.read_text()))


class EmbeddedTeacher:
    """Starts the embedded server the first time `ensure()` finds a loopback endpoint with nothing listening, and
    stops it on exit (only if it started it). Pass `ensure` to TeacherClient(before_send=...) so a run whose answers
    are all cached never starts a server at all. A remote endpoint, or a loopback one already serving, is left alone."""

    def __init__(self, served_model_name: str, base_url: str | None = None, *, model: str = "smollm2",
                 backend: str = "transformers"):
        self.served_model_name, self.model, self.backend = served_model_name, model, backend
        self.host, self.port = endpoint_address(base_url or settings().teacher_base_url)
        self.info: ServerInfo | None = None
        self._checked = False
        self._lock = threading.Lock()

    def ensure(self) -> ServerInfo | None:
        with self._lock:
            if not self._checked:
                self._checked = True
                if self.host in LOOPBACK and not is_listening(self.host, self.port):
                    self.info = start_server(self.served_model_name, model=self.model, host=self.host,
                                             port=self.port, backend=self.backend)
            return self.info

    def __enter__(self) -> "EmbeddedTeacher":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.info is not None:
            stop_server(self.port)


@contextlib.contextmanager
def embedded_teacher(served_model_name: str, base_url: str | None = None, *, model: str = "smollm2",
                     backend: str = "transformers") -> Iterator[ServerInfo | None]:
    """Eager form: the server (if one was needed) is up inside the block, and stopped after it."""
    with EmbeddedTeacher(served_model_name, base_url, model=model, backend=backend) as server:
        yield server.ensure()


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle teacher-server {start,stop,status,usage}`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kd_bundle teacher-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "status", "usage"])
    parser.add_argument("--model", default="smollm2", help="weights to serve: 'smollm2' or an HF model folder")
    parser.add_argument("--served-model-name", default="smollm2", help="name clients ask for (TeacherConfig.model)")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "echo"])
    parser.add_argument("--port", type=int, default=None, help="default: the port of KD_TEACHER_BASE_URL")
    parser.add_argument("--out", type=Path, default=None, help="usage: write the request table to this Parquet file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.action == "start":
        try:
            info = start_server(args.served_model_name, model=args.model, backend=args.backend, port=args.port)
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"teacher serving {info.served_model_name} at {info.base_url} (pid {info.pid}); "
              f"stop with: python -m kd_bundle teacher-server stop")
    elif args.action == "stop":
        print("stopped" if stop_server(args.port) else "no embedded teacher was running")
    elif args.action == "status":
        info = server_info(args.port)
        up = info is not None and _alive(info.pid) and is_listening(info.host, info.port)
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


def _resolve(model: str) -> Path:
    from kd_bundle.models import resolve_model_path

    return resolve_model_path(model)


def _info_file(port: int, root: Path | None) -> Path:
    return server_dir(root) / f"server-{port}.json"


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_ready(process: subprocess.Popen, info: ServerInfo, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{info.host}:{info.port}/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"llm-katan exited with code {process.returncode}:\n{_tail(info.log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"llm-katan did not answer {url} within {timeout_s:.0f} s:\n{_tail(info.log_file)}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
