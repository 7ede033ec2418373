"""A research flow on a Dask cluster of worker processes gives the table the in-process run gives, and heals a
damaged artifact as the in-process run does."""

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
            Client(cluster) as client:
        dask_flow = on_dask(rq1_knowledge_format, address=cluster.scheduler_address)
        with get_task_stream(client) as stream:
            on_dask_table, states = _run(dask_flow, cfg)
        assert {s for run in states.values() for s in run} == {"Completed"}, states
        workers = {task["worker"] for task in stream.data}
        checked = [name for name in states if name.split("-")[0].endswith("/checked")]
        assert len(stream.data) >= len(checked) > 0 and len(workers) == 2, (workers, checked)

        # a cut predictions file: the rerun on the workers quarantines it, recomputes its stage, gives the same table
        damaged = sorted((isolated_store / "store" / "predictions").glob("*.parquet"))[0]
        damaged.write_bytes(damaged.read_bytes()[:1000])
        healed_table, healed_states = _run(dask_flow, cfg)
    assert (isolated_store / "store" / ".quarantine" / "predictions" / damaged.name).stat().st_size == 1000
    recomputed = [name for name, run in healed_states.items() if "/checked" not in name and "Completed" in run]
    # the damaged file's stage, and downstream of it only what its new clocks change: no knowledge, no adapter
    downstream = ("student-predict", "predict", "score", "collect")
    assert recomputed and all(name.startswith(downstream) for name in recomputed), healed_states
    clocks = [*TIMING_COLUMNS, "predictions_sha256"]  # a recomputed student run carries its own seconds
    assert healed_table.drop(clocks).equals(on_dask_table.drop(clocks))

    # the same flow in this process, on a fresh store and fresh cache records
    monkeypatch.setenv("KD_STORE", str(isolated_store / "store-in-process"))
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: isolated_store / "results-in-process"}):
        in_process_table, _ = _run(rq1_knowledge_format, cfg)
    # Clocks differ between equal runs, and so does the hash of a predictions file that carries its rows' seconds.
    # So does an adapter folder's hash from one process to another: peft writes `target_modules` ("all-linear"
    # expanded into a set of names) in set order, which per-process string hashing changes. Its weights are the same.
    differing = [c for c in on_dask_table.drop([*clocks, "adapter_sha256"]).columns
                 if not on_dask_table[c].equals(in_process_table[c])]
    assert not differing, differing
    pairs = [(a, b) for a, b in zip(on_dask_table["adapter_sha256"], in_process_table["adapter_sha256"]) if a or b]
    assert pairs and all(a and b for a, b in pairs)
    for dask_sha, local_sha in pairs:
        weights = [isolated_store / store / "adapter" / sha / "adapter_model.safetensors"
                   for store, sha in (("store", dask_sha), ("store-in-process", local_sha))]
        assert weights[0].read_bytes() == weights[1].read_bytes()
    assert on_dask_table.filter(pl.col("method") == "student").height == 4 + 1  # the cells + the zero-shot student
