"""The research flows on a Dask cluster (prefect-dask): independent adapters and predictions run at once.

    from flows.scale_out import on_dask
    on_dask(rq1_knowledge_format, workers=4)(domain="food")                # a local cluster of 4 processes
    on_dask(full_grid, address="tcp://scheduler:8786")()                   # a cluster that is already running

`prefect.yaml` deploys `full-grid/dask` from `full_grid_on_dask`. Dask's nanny starts each worker process with
OMP_NUM_THREADS=1, so torch stages use one core each: give a CPU machine as many workers as it has cores. Each
worker loads its own copy of the student, so on a GPU machine give it as many workers as the models that fit in
GPU memory at once (one, for an 8B student in 4-bit on one GPU). Every worker must see the same KD_STORE and
Prefect result storage (one machine: its disk; several: a shared volume): artifacts, cache records and locks are files.
"""

from __future__ import annotations

import os
from typing import TypeVar

from prefect import Flow
from prefect_dask import DaskTaskRunner

from flows.research import full_grid, rq1_knowledge_format, rq2_knowledge_quantity, rq3_knowledge_utilization

F = TypeVar("F", bound=Flow)


def on_dask(research_flow: F, address: str | None = None, workers: int | None = None) -> F:
    """The same flow, its stages submitted to a Dask cluster: `address`'s, or a local one of `workers` processes."""
    if address:
        return research_flow.with_options(task_runner=DaskTaskRunner(address=address))
    cluster = {"n_workers": workers or os.cpu_count() or 1, "threads_per_worker": 1, "processes": True}
    return research_flow.with_options(task_runner=DaskTaskRunner(cluster_kwargs=cluster))


rq1_on_dask = on_dask(rq1_knowledge_format)
rq2_on_dask = on_dask(rq2_knowledge_quantity)
rq3_on_dask = on_dask(rq3_knowledge_utilization)
full_grid_on_dask = on_dask(full_grid)
