"""A research flow on a Dask cluster of worker processes gives the table the in-process run gives."""

from __future__ import annotations

import polars as pl
from distributed import Client, LocalCluster, get_task_stream
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from flows.research import rq1_knowledge_format
from flows.scale_out import on_dask
from kd_bundle.evaluation.results import TIMING_COLUMNS
from kd_bundle.grid import RQ1Grid
from kd_bundle.store import read_artifact

from .conftest import task_states

SMALL = RQ1Grid(formats=("raw", "rules"), utilizations=("icl", "sft"))


def _run(flow, cfg):
    state = flow(domain="food", grid=SMALL, pipeline=cfg, return_state=True)
    assert state.is_completed(), state
    return read_artifact(state.result()), task_states(state.state_details.flow_run_id)


def test_dask_workers_compute_the_same_table(pipeline, isolated_store, monkeypatch):
    _, cfg = pipeline
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream:
        on_dask_table, states = _run(on_dask(rq1_knowledge_format, address=cluster.scheduler_address), cfg)
    assert {s for run in states.values() for s in run} == {"Completed"}, states
    workers = {task["worker"] for task in stream.data}
    assert len(stream.data) >= sum(len(run) for run in states.values()) and len(workers) == 2, workers

    # the same flow in this process, on a fresh store and fresh cache records
    monkeypatch.setenv("KD_STORE", str(isolated_store / "store-in-process"))
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: isolated_store / "results-in-process"}):
        in_process_table, _ = _run(rq1_knowledge_format, cfg)
    # Clocks differ between equal runs, and so does the hash of a predictions file that carries its rows' seconds.
    clocks = [*TIMING_COLUMNS, "predictions_sha256"]
    differing = [c for c in on_dask_table.drop(clocks).columns if not on_dask_table[c].equals(in_process_table[c])]
    assert not differing, differing
    assert on_dask_table.filter(pl.col("method") == "student").height == 4 + 1  # the cells + the zero-shot student
