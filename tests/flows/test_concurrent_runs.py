"""Two flow runs in two processes ask for the same stages at the same moment: each stage is computed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from .conftest import task_states

ROOT = Path(__file__).resolve().parents[2]


def test_two_runs_on_one_cache_key_compute_it_once(isolated_store):
    barrier = isolated_store / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(isolated_store / "prefect-results")}
    runs = [subprocess.Popen([sys.executable, "-m", "tests.flows.concurrent_run", str(barrier), name], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("first", "second")]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    flow_run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]

    states = [task_states(run_id, expected=2) for run_id in flow_run_ids]
    for name in ("load-sessions-food", "mine-patterns"):
        assert sorted(s for run in states for s in run[name]) == ["Cached", "Completed"], states

    # Mining takes seconds: the Cached run was Running while the other computed, waited on the lock, then read
    # the record the other had just written. Without the lock it would have mined the patterns a second time.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        mining = {run.state_name: {s.name: s.timestamp for s in client.read_task_run_states(run.id)}
                  for run in task_runs if run.name == "mine-patterns"}
    assert mining["Cached"]["Running"] < mining["Completed"]["Completed"] <= mining["Cached"]["Cached"], mining
    assert not list((isolated_store / "store" / ".locks").glob("*.lock"))  # both released

    patterns = list((isolated_store / "store" / "patterns").glob("*.parquet"))
    assert len(patterns) == 1 and pl.read_parquet(patterns[0]).height > 0
