"""Stage locks that a dead holder cannot keep.

Prefect's FileSystemLockManager writes `{"holder", "expiration": null}` and waits, silently and forever, while
that file exists: after a `kill -9`, the OOM killer or a pod eviction every later run of the stage hung
(issue 12). Here each lock file also records the holder's pid, host and process start time, so a waiter on
the same host sees that the holder is gone (or its pid now belongs to another process) and breaks the lock;
while the holder lives, the waiter logs which key it waits on and which pid holds it.

A holder on another host (a store on a shared filesystem) cannot be checked from here; such a lock is only
released by its holder or by an expiry (`hold_timeout`). Use Redis locks across machines (notes/prefect.md).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import psutil
import pydantic_core
from prefect.exceptions import MissingContextError
from prefect.locking.filesystem import FileSystemLockManager
from prefect.logging import get_logger, get_run_logger

from kd_bundle.config import settings

FIRST_WAIT_LOG_S = 5.0  # a lock held a few seconds is normal (another run computing the same stage)
WAIT_LOG_EVERY_S = 60.0
_POLL_S = 0.1


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()  # in a run: the line shows in the UI next to the waiting task
    except MissingContextError:
        return get_logger("kd_bundle.locks")


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def holder_gone(info: dict[str, Any]) -> bool:
    """True when the lock's holder is known to be dead: same host, and its pid is gone, a zombie, or reused."""
    pid, host = info.get("pid"), info.get("host")
    if pid is None or host != socket.gethostname():
        return False  # written by plain Prefect, or on another host: cannot tell
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = info.get("started")
        return started is not None and abs(process.create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


class StoreLockManager(FileSystemLockManager):
    """File locks under `<store>/.locks`, the store read at each use rather than at import.

    Every process that shares a store (two flow runs, a worker's subprocesses, a test's isolated store) then
    shares its locks, whatever KD_STORE was when `tasks` was first imported.
    """

    def __init__(self) -> None:
        self._locks = {}

    @property
    def lock_files_directory(self) -> Path:  # type: ignore[override]
        return (settings().store / ".locks").expanduser().resolve()

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        self._ensure_lock_files_directory_exists()
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            if self.is_lock_holder(key, holder):
                return True
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if self.is_locked(key) and not self.wait_for_lock(key, remaining):
                return False
            if self._create(key, holder, hold_timeout):
                return True
            # another waiter created it between our check and our link: wait for that one in turn

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        try:
            info = self._get_lock_info(key, use_cache=use_cache)
        except ValueError:  # a file half written by a plain FileSystemLockManager: held, holder unknown
            return True
        if info is None:
            return False
        if holder_gone(info):
            self._break(key, info)
            return False
        return super().is_locked(key, use_cache=True)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        start = time.monotonic()
        next_log = start + FIRST_WAIT_LOG_S
        while self.is_locked(key, use_cache=False):
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                return False
            if now >= next_log:
                info = self._locks.get(key) or {}
                _logger().info(
                    "waiting %.0f s for lock %s held by pid %s on %s (another run computing this stage; "
                    "a dead holder's lock is broken automatically)",
                    now - start, key, info.get("pid", "?"), info.get("host", "?"),
                )
                next_log = now + WAIT_LOG_EVERY_S
            time.sleep(_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)

    def _create(self, key: str, holder: str, hold_timeout: float | None) -> bool:
        """Publish a complete lock file in one atomic step (link fails if the file exists)."""
        path = self._lock_path_for_key(key)
        expiration = None if hold_timeout is None else datetime.now(UTC) + timedelta(seconds=hold_timeout)
        record = {"holder": holder, "expiration": None if expiration is None else str(expiration),
                  "pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid())}
        staging = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
        staging.write_bytes(pydantic_core.to_json(record))
        try:
            os.link(staging, path)
        except FileExistsError:
            return False
        finally:
            staging.unlink(missing_ok=True)
        self._locks[key] = {**record, "expiration": expiration, "path": path}
        return True

    def _break(self, key: str, info: dict[str, Any]) -> None:
        path = self._lock_path_for_key(key)
        try:  # re-read just before removing: another waiter may have broken it and taken it already
            current = pydantic_core.from_json(path.read_bytes())
        except (FileNotFoundError, ValueError):
            current = None
        if current is not None and (current.get("pid"), current.get("started")) == (info.get("pid"), info.get("started")):
            path.unlink(missing_ok=True)
            _logger().warning("broke lock %s: its holder, pid %s on %s, is gone", key, info.get("pid"), info.get("host"))
        self._locks.pop(key, None)
