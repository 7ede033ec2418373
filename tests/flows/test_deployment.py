"""What a user does from the README: a local Prefect server, a process worker, `prefect deploy`, then
`prefect deployment run 'rq1-knowledge-format/smoke' --param domain=food`, which must complete end to end;
and the weekly full grid, whose schedule the server's scheduler turns into runs on Sundays 03:00 UTC."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s")


def _scheduled_starts(api: str, flow: str, deployment: str, timeout: float = 120) -> list[datetime]:
    """Expected start times (UTC) of the runs the server's scheduler service created for a deployment."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{api}/deployments/name/{flow}/{deployment}", timeout=10) as reply:
            deployment_id = json.load(reply)["id"]
        query = {"deployments": {"id": {"any_": [deployment_id]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
        request = urllib.request.Request(f"{api}/flow_runs/filter", data=json.dumps(query).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            runs = json.load(reply)
        if runs or time.monotonic() > deadline:
            return [datetime.fromisoformat(r["expected_start_time"]).astimezone(timezone.utc) for r in runs]
        time.sleep(2)


@pytest.mark.slow
def test_deployment_run_from_the_cli_completes(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api, "PWD": str(ROOT),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "KD_STORE": str(tmp_path / "store"),
           "KD_RESULTS_DIR": str(tmp_path / "published"), "HF_HUB_OFFLINE": "1",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-results")}
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = []

    def start(name: str, *args: str) -> subprocess.Popen:
        process = subprocess.Popen([*PREFECT, *args], cwd=ROOT, env=env, stdout=open(logs / f"{name}.log", "w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        server = start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui")
        _wait_healthy(api, server)
        assert run("work-pool", "create", "kd-local", "--type", "process").returncode == 0
        deployed = run("--no-prompt", "deploy", "--name", "rq1-knowledge-format/smoke", "--name", "full-grid/weekly")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        start("worker", "worker", "start", "--pool", "kd-local")
        triggered = run("deployment", "run", "rq1-knowledge-format/smoke", "--param", "domain=food", "--watch",
                        "--watch-timeout", "900", timeout=960)
        output = triggered.stdout + triggered.stderr
        worker_log = (logs / "worker.log").read_text()[-3000:]
        assert triggered.returncode == 0, output + worker_log
        assert "Completed" in output, output + worker_log
        published = tmp_path / "published" / "rq1-food.parquet"
        assert published.exists(), worker_log

        upcoming = _scheduled_starts(api, "full-grid", "weekly")
        assert upcoming, "the scheduler created no run of full-grid/weekly"
        assert all((t.weekday(), t.hour, t.minute) == (6, 3, 0) for t in upcoming), upcoming
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
