"""A stage lock whose holder was killed with SIGKILL (or by the OOM killer) no longer hangs the next run.

Before (issue 12): the lock file stayed with `"expiration": null` and every later run of the stage waited for
it forever, silently. Now the waiter logs the key and the holder's pid while the holder lives, and breaks the
lock once the holder is gone. Every wait here is bounded, so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from prefect.settings import PREFECT_API_URL

from tasks.locks import FIRST_WAIT_LOG_S

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_next_run_breaks_the_lock_of_a_killed_holder(isolated_store):
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(isolated_store / "prefect-results")}
    locks = isolated_store / "store" / ".locks"
    hold_file = isolated_store / "holding"
    holder_log, waiter_log = isolated_store / "holder.log", isolated_store / "waiter.log"

    def start(log: Path, **extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.flows.lock_holder", "same-key"], cwd=ROOT,
                                env={**env, **extra}, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    holder = start(holder_log, KD_TEST_HOLD_FILE=str(hold_file))
    waiter = None
    try:
        _wait_for(hold_file.exists, f"the holder never took the lock: {holder_log.read_text()[-2000:]}", 180)
        (lock,) = locks.glob("*.lock")
        record = json.loads(lock.read_text())
        assert record["pid"] == holder.pid and record["host"] and record["started"] > 0

        waiter = start(waiter_log)
        _wait_for(lambda: "waiting" in waiter_log.read_text(), "the waiter never said what it waits for",
                  120 + FIRST_WAIT_LOG_S)
        waiting = next(line for line in waiter_log.read_text().splitlines() if "waiting" in line)
        assert f"lock {lock.stem} held by pid {holder.pid}" in waiting, waiting
        assert waiter.poll() is None  # the holder lives: the waiter waits

        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        # SIGKILL runs no cleanup, so the lock file outlives its holder: the waiter may already be breaking it
        # (it checks the holder often), so that is proven below by its "broke lock" line, not by a racy exists()

        assert waiter.wait(timeout=120) == 0, waiter_log.read_text()[-3000:]
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    output = waiter_log.read_text()
    assert f"broke lock {lock.stem}: its holder, pid {holder.pid}" in output, output[-3000:]
    assert not list(locks.glob("*.lock"))
    (written,) = (isolated_store / "store" / "lock-test").glob("*.parquet")
    assert pl.read_parquet(written)["pid"].to_list() == [waiter.pid]  # computed by the waiter, not the dead holder
