"""Units of teacher work on a bounded thread pool, in order, stopping cleanly at the first error."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_in_pool(fn: Callable[[T], R], items: list[T], max_workers: int, tick: Callable[[int], None]) -> list[R]:
    """`fn` over `items` on at most `max_workers` threads, results in order; `tick(done)` about once a second.

    On the first error the pending items are cancelled, the running ones finish (their answers are cached by
    the client), and that error is raised; Ctrl-C does the same."""
    results: list[Any] = [None] * len(items)
    done = 0
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="teacher") as pool:
        stop = threading.Event()
        futures = {pool.submit(_guarded, fn, item, stop): index for index, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                for future in sorted(finished, key=futures.get):
                    results[futures[future]] = future.result()  # raises the first error
                    done += 1
                tick(done)
        except BaseException as error:  # an error, or Ctrl-C: nothing new starts; running ones finish, cached
            stop.set()
            for future in pending:
                future.cancel()
            tick(done)
            if isinstance(error, _Stopped):  # raise the error that stopped the others
                wait(pending)
                causes = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
                raise next(e for e in causes if not isinstance(e, _Stopped)) from None
            raise
    return results


class _Stopped(Exception):
    """An item not started because another one failed."""


def _guarded(fn: Callable[[T], R], item: T, stop: threading.Event) -> R:
    if stop.is_set():
        raise _Stopped
    try:
        return fn(item)
    except BaseException:
        stop.set()  # before this future reports: no worker picks up another item
        raise
