"""`deployments/local.sh down` waits for each process to exit, escalating the signal, and keeps a pid file until
its process is gone (issue 12: it sent one SIGTERM, deleted the pid file, and left the worker running).

Stand-ins for the server and worker (their command lines name prefect, as the real ones do) react to signals
like the real ones: the worker ignores SIGTERM and stops on the second SIGINT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = """
import signal, sys, time
mode = sys.argv[1]
interrupts = []
def on_int(*_):
    interrupts.append(1)
    if mode == "worker" and len(interrupts) >= 2:
        sys.exit(0)
signal.signal(signal.SIGINT, on_int)
if mode in ("worker", "stubborn"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[2], "w").close()
while True:
    time.sleep(0.05)
"""


def _start(tmp_path: Path, name: str, mode: str) -> subprocess.Popen:
    script = tmp_path / "fake-prefect-process.py"
    script.write_text(STAND_IN)
    ready = tmp_path / f"{name}.ready"
    process = subprocess.Popen([sys.executable, str(script), mode, str(ready)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, f"{name} stand-in did not start"
        time.sleep(0.05)
    (tmp_path / "run" / f"{name}.pid").write_text(f"{process.pid}\n")
    return process


def _down(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "deployments" / "local.sh"), "down"], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "KD_LOCAL_RUN": str(tmp_path / "run"), **env})


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def test_down_escalates_until_worker_and_server_are_gone(tmp_path: Path, run_dir: Path) -> None:
    worker, server = _start(tmp_path, "worker", "worker"), _start(tmp_path, "server", "plain")
    done = _down(tmp_path, KD_STOP_WAIT_S="1")
    assert done.returncode == 0, done.stderr
    assert worker.wait(timeout=5) == 0  # its own exit on the second SIGINT, not a SIGKILL
    assert server.wait(timeout=5) != 0  # ended by the first SIGTERM
    assert f"worker (pid {worker.pid}) still running after SIGTERM" in done.stderr
    assert f"worker stopped (pid {worker.pid})" in done.stdout and f"server stopped (pid {server.pid})" in done.stdout
    assert not list(run_dir.glob("*.pid"))


def test_down_kills_a_process_that_ignores_term_and_int(tmp_path: Path, run_dir: Path) -> None:
    worker = _start(tmp_path, "worker", "stubborn")
    done = _down(tmp_path, KD_STOP_WAIT_S="1")
    assert done.returncode == 0, done.stderr
    assert worker.wait(timeout=5) == -9
    assert "still running after SIGINT" in done.stderr and not (run_dir / "worker.pid").exists()


def test_down_leaves_a_pid_file_whose_pid_is_not_ours(tmp_path: Path, run_dir: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])  # a live pid that is not a prefect process
    try:
        (run_dir / "worker.pid").write_text(f"{sleeper.pid}\n")
        assert _down(tmp_path).returncode == 0
        assert sleeper.poll() is None  # not signalled
        assert not (run_dir / "worker.pid").exists()  # stale: nothing of ours to stop
    finally:
        sleeper.kill()
        sleeper.wait()
