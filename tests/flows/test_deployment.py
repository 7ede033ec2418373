"""What a user does from the README: a local Prefect server, a process worker, `prefect deploy`, then
`prefect deployment run 'rq1-knowledge-format/smoke'` with a nested override of its pipeline, which must
complete end to end and keep the rest of the smoke pipeline, and again with a data folder (`data_dir`); the weekly full grid, deployed paused, whose
schedule (once resumed with the README's command) the scheduler turns into runs on Sundays 03:00 UTC."""

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

import polars as pl
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
        with urllib.request.urlopen(f"{api}/deployments/name/full-grid/weekly", timeout=10) as reply:
            assert [s["active"] for s in json.load(reply)["schedules"]] == [False]  # deployed paused

        misspelt = run("deployment", "run", "rq1-knowledge-format/smoke", "--params",
                       '{"pipeline": {"max_test_sesions": 3}}')
        assert misspelt.returncode != 0 and "max_test_sesions" in misspelt.stdout + misspelt.stderr, misspelt

        start("worker", "worker", "start", "--pool", "kd-local")
        # A nested override: before issue 12 it replaced the whole smoke pipeline with the full study.
        triggered = run("deployment", "run", "rq1-knowledge-format/smoke", "--params",
                        '{"domain": "food", "pipeline": {"max_test_sessions": 3}}', "--watch",
                        "--watch-timeout", "900", timeout=960)
        output = triggered.stdout + triggered.stderr
        worker_log = (logs / "worker.log").read_text()[-3000:]
        assert triggered.returncode == 0, output + worker_log
        assert "Completed" in output, output + worker_log
        published = tmp_path / "published" / "rq1-food.parquet"
        assert published.exists(), worker_log
        table = pl.read_parquet(published)
        assert set(table["n_sessions"]) == {3}, table  # the override
        assert "teacher" not in set(table["method"]), table  # smoke's `teacher_rows: []`, kept

        # your own data through the form's data_dir field: the rows and the published table carry its label
        own = run("deployment", "run", "rq1-knowledge-format/smoke", "--params",
                  json.dumps({"data_dir": str(ROOT / "examples" / "my-shop"), "pipeline": {"max_test_sessions": 3}}),
                  "--watch", "--watch-timeout", "900", timeout=960)
        assert own.returncode == 0 and "Completed" in own.stdout + own.stderr, \
            own.stdout + own.stderr + (logs / "worker.log").read_text()[-3000:]
        own_table = pl.read_parquet(tmp_path / "published" / "rq1-my-shop.parquet")
        assert set(own_table["domain"]) == {"my-shop"} and set(own_table["n_sessions"]) == {3}, own_table

        resumed = run("--no-prompt", "deployment", "schedule", "resume", "--all")  # README: turn the weekly run on
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

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
