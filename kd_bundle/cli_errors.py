"""Entry points report a data error (or a store that cannot take a write, or a locked request cache) as one line on
stderr and exit 2; the full trace goes to a log file.

A bad data file inside a flow used to print 150-300 lines with several tracebacks (each engine layer logs the
exception again) before the one clear message. `run_cli` sends every log record of the run to a file under
`<store>/.logs`, keeps records about the data error off the terminal, and ends with one line naming the log.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from kd_bundle.config import settings
from kd_bundle.data.checks import DataError
from kd_bundle.store import StoreWriteError
from kd_bundle.teacher.request_cache import RequestCacheError

# Errors whose message says all a user needs (what, where, what to do): one line, no traceback on the terminal.
ONE_LINE_ERRORS = (DataError, StoreWriteError, RequestCacheError)

EXIT_DATA_ERROR = 2
_FORMAT = "%(asctime)s %(levelname)s %(name)s - %(message)s"


def log_file(prog: str) -> Path:
    """A fresh log file for one run of `prog`, e.g. `<store>/.logs/flows.baselines-20261126-194102-4242.log`."""
    name = prog.removeprefix("python -m ").replace(" ", "-")
    return settings().store / ".logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


class _DataErrorOffTerminal(logging.Filter):
    """Drops records that repeat the data error (Prefect logs it per task, per flow and per final state)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not isinstance(error, ONE_LINE_ERRORS) and not any(name in message for name in _one_line_names())


def _one_line_names() -> set[str]:
    """The class names of ONE_LINE_ERRORS and their subclasses (RequestCacheLocked), as Prefect's state messages
    spell them."""
    names, pending = set(), list(ONE_LINE_ERRORS)
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return names


class _QuietFileHandler(logging.FileHandler):
    """The run's log file; on a full or read-only store it cannot be written, which must not bury the one line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _terminal_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [
        (logger, handler)
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]


def run_cli(prog: str, main: Callable[[], int | None]) -> int:
    """Run `main`; a DataError becomes `<prog>: error: <message> (full trace: <log>)` and exit 2."""
    path = log_file(prog)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only store: the run itself will say so in one line
        pass
    to_file = _QuietFileHandler(path, delay=True, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT))
    quiet = _DataErrorOffTerminal()
    attached = _terminal_handlers()
    for logger, handler in attached:
        handler.addFilter(quiet)
        if to_file not in logger.handlers:
            logger.addHandler(to_file)
    try:
        return int(main() or 0)
    except ONE_LINE_ERRORS as exc:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{prog}: {type(exc).__name__}\n{''.join(traceback.format_exception(exc))}")
            trace = f" (full trace: {path})"
        except OSError:
            trace = ""
        print(f"{prog}: error: {exc}{trace}", file=sys.stderr)
        return EXIT_DATA_ERROR
    finally:
        for logger, handler in attached:
            handler.removeFilter(quiet)
            logger.removeHandler(to_file)
        to_file.close()
