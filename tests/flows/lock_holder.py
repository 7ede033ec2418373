"""A run of one stage in its own process, for tests/flows/test_stale_locks.py.

    python -m tests.flows.lock_holder LABEL

With KD_TEST_HOLD_FILE set, the stage touches that file while it holds its lock and then sleeps (the test
kills it there); without, it writes its artifact at once. Store, result storage and API come from the
environment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import polars as pl
from prefect import flow

from kd_bundle.store import ArtifactRef, write_artifact
from tasks.common import stage_task


@stage_task("store")
def hold_stage(label: str) -> ArtifactRef:
    hold = os.environ.get("KD_TEST_HOLD_FILE")
    if hold:
        Path(hold).touch()
        time.sleep(600)
    return write_artifact(pl.DataFrame({"label": [label], "pid": [os.getpid()]}), "lock-test")


@flow(name="lock-holder")
def run_stage(label: str) -> ArtifactRef:
    return hold_stage(label)


if __name__ == "__main__":
    print(run_stage(sys.argv[1]))
