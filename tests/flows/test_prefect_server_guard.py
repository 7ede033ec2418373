"""A run killed with SIGKILL leaves no Prefect temporary API server behind (issue 12: orphans)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

_RUN = """
import os, sys, time
os.environ.pop("PREFECT_API_URL", None)
from flows.prefect_server import guard_temporary_server
print(guard_temporary_server(), flush=True)
time.sleep(600)
"""


def test_killed_run_takes_its_temporary_prefect_server_with_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=os.getcwd(), PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    run = subprocess.Popen([sys.executable, "-c", _RUN], env=env, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(run.stdout.readline())
        assert psutil.pid_exists(server_pid)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 30
    while psutil.pid_exists(server_pid) and psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"Prefect's temporary server (pid {server_pid}) outlived its killed run"
        time.sleep(0.5)
