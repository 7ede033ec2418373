"""One of two processes that run the same stages at the same moment (tests/flows/test_concurrent_runs.py).

    python -m tests.flows.concurrent_run BARRIER_DIR NAME

Waits in the flow body until the other process is there too, then loads the food sessions and mines their
patterns, and prints its flow run id. Store, result storage and API come from the environment.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from kd_bundle.config import DataConfig, PatternConfig, settings
from tasks.data import load_sessions
from tasks.knowledge import mine_patterns


def _meet(barrier: Path, name: str, timeout: float = 120) -> None:
    (barrier / name).touch()
    deadline = time.monotonic() + timeout
    while len(list(barrier.iterdir())) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other process never reached {barrier}")
        time.sleep(0.01)


@flow(name="concurrent-run")
def same_stages(barrier: Path, name: str) -> str:
    _meet(barrier, name)
    sessions = load_sessions(DataConfig(domain="food"), settings().data_root)
    mine_patterns(sessions, PatternConfig())
    return flow_run.id


if __name__ == "__main__":
    print(same_stages(Path(sys.argv[1]), sys.argv[2]))
