"""The durable request cache: one SQLite file of teacher answers by request key, and the usage export.

Only valid completions go in (the client checks them first), each committed before the caller sees it, so a
killed run resumes by sending only the requests whose answers are missing. The file is checked whenever it is
opened: a damaged one is moved aside and its readable answers carried into a fresh one (cache_salvage), a locked
one stops the run in one line and is left alone. Several processes may write at once (WAL, busy time-out).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import polars as pl
from filelock import FileLock

from kd_bundle.config import settings
from kd_bundle.teacher.cache_salvage import is_damage, is_locked, move_aside, salvage_rows
from kd_bundle.teacher.config import Message

log = logging.getLogger("kd_bundle.teacher")

USAGE_COLUMNS = {
    "request_key": pl.String,
    "model": pl.String,
    "endpoint": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cost": pl.Float64,
    "latency_s": pl.Float64,
    "finish_reason": pl.String,
    "answered_at": pl.Float64,  # unix time the answer arrived (first time; a cache hit keeps the original)
    "from_cache": pl.Boolean,  # True when this run reused an answer paid for earlier
}


_KEYS_PER_QUERY = 900  # below SQLite's oldest bound-parameter limit (999)
ANSWER_COLUMNS = ("request_key", "model", "endpoint", "request", "text", "finish_reason", "prompt_tokens",
                  "completion_tokens", "cost", "latency_s", "answered_at")
_CREATE_ANSWERS = (
    "CREATE TABLE IF NOT EXISTS answers (request_key TEXT PRIMARY KEY, model TEXT, endpoint TEXT, request TEXT,"
    " text TEXT, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, latency_s REAL,"
    " answered_at REAL)"
)


class RequestCacheError(RuntimeError):
    """The request cache file cannot be used as it is; the message names it and says what to do."""


class RequestCacheLocked(RequestCacheError):
    """Another run held the cache's write lock longer than the time-out; the file is fine and left as it is."""


class RequestCacheDamaged(RequestCacheError):
    """The cache went bad while this run had it open (checked sound when opened); the next open salvages it."""


def request_key(model: str, messages: list[Message], generation: dict[str, Any]) -> str:
    """Content hash of one request: model, messages and everything that changes the answer (sampling, max_tokens,
    response_format). The endpoint, key and client settings are deliberately not in it."""
    payload = json.dumps({"model": model, "messages": messages, "generation": generation}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def request_cache_path(root: Path | None = None) -> Path:
    return Path(root if root is not None else settings().store) / "teacher" / "requests.sqlite"


class RequestCache:
    """Answers by request key in one SQLite file: each insert is committed before the caller sees the answer.

    `timeout_s` is how long an operation waits for another process's lock before RequestCacheLocked."""

    def __init__(self, path: Path, timeout_s: float = 60):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db, _ = self._connect_checked()
        if db is not None:
            return db
        # Two runs that find the same damage repair it once: the second waits here, then finds the fresh file.
        with FileLock(f"{self.path}.repair-lock"):
            db, problem = self._connect_checked()
            if db is not None:
                return db
            # Salvage before the move: if reading fails, the file is still where the next run will look for it.
            rows = salvage_rows(self.path, "answers", ANSWER_COLUMNS)
            damaged = move_aside(self.path)
            db, again = self._connect_checked()
            if db is None:
                raise RequestCacheDamaged(f"request cache {self.path}: a fresh database cannot be made there "
                                          f"({again}); the damaged one is kept as {damaged}")
            try:
                with self._guarded():
                    db.execute("BEGIN IMMEDIATE")
                    # OR IGNORE: a run that started meanwhile may already have written a newer answer for a key
                    db.executemany(f"INSERT OR IGNORE INTO answers ({', '.join(ANSWER_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' * len(ANSWER_COLUMNS))})", rows)
                    db.execute("COMMIT")
            except RequestCacheError as exc:
                db.close()  # rolls the half-written transaction back
                raise type(exc)(f"{exc}; the {len(rows)} answers salvaged from the damaged cache are still only in "
                                f"{damaged}") from exc
        log.warning("request cache %s is damaged (%s): moved aside to %s; %d answers salvaged into a fresh cache, "
                    "the rest are asked again", self.path, problem, damaged.name, len(rows))
        return db

    def _connect_checked(self) -> tuple[sqlite3.Connection | None, str | None]:
        """An open, sound connection, or None and what is wrong with the file. A lock raises instead."""
        db = None
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_CREATE_ANSWERS)
            # integrity_check, not quick_check: it also proves the key index matches the rows, and get() looks
            # answers up through it. On a 10k-answer cache (42 MB) it takes ~47 ms against quick_check's ~35 ms.
            report = [line for (line,) in db.execute("PRAGMA integrity_check(1)")]
            if report == ["ok"]:
                return db, None
            db.close()
            return None, _one_line(report)
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            if is_locked(exc):
                raise self._locked(exc) from exc
            if not is_damage(exc):
                raise
            return None, str(exc)

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_locked(exc):
                raise self._locked(exc) from exc
            if is_damage(exc):
                raise RequestCacheDamaged(
                    f"request cache {self.path} is damaged ({exc}); rerun: the next run moves it aside and carries "
                    "its readable answers into a fresh one"
                ) from exc
            raise

    def _locked(self, exc: sqlite3.Error) -> RequestCacheLocked:
        return RequestCacheLocked(f"request cache {self.path} is locked ({exc}): another run holds it (waited "
                                  f"{self.timeout_s:g} s); let that run finish or stop it, then rerun")

    def get(self, key: str) -> sqlite3.Row | None:
        with self._lock, self._guarded():
            cursor = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM answers WHERE request_key = ?",
                (key,),
            )
            return cursor.fetchone()

    def put(self, key: str, row: dict[str, Any]) -> None:
        columns = ["request_key", *row]
        with self._lock, self._guarded():
            self._db.execute(
                f"INSERT OR REPLACE INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [key, *row.values()],
            )

    def usage(self, keys: Iterable[str] | None = None) -> pl.DataFrame:
        """Usage rows of every answer, or of `keys` only: looked up by primary key, since a results row asks for
        a few requests of a cache that grows with the whole grid."""
        query = ("SELECT request_key, model, endpoint, prompt_tokens, completion_tokens, cost, latency_s,"
                 " finish_reason, answered_at FROM answers")
        with self._lock, self._guarded():
            if keys is None:
                rows = self._db.execute(query).fetchall()
            else:
                wanted, rows = list(dict.fromkeys(keys)), []
                for start in range(0, len(wanted), _KEYS_PER_QUERY):
                    chunk = wanted[start : start + _KEYS_PER_QUERY]
                    rows += self._db.execute(f"{query} WHERE request_key IN ({', '.join('?' * len(chunk))})",
                                             chunk).fetchall()
        names = [c for c in USAGE_COLUMNS if c != "from_cache"]
        return pl.DataFrame(rows, schema={c: USAGE_COLUMNS[c] for c in names}, orient="row")

    def __len__(self) -> int:
        with self._lock, self._guarded():
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _one_line(report: list[str]) -> str:
    """integrity_check's report as one line, without its "*** in database main ***" heading."""
    lines = [line.strip() for text in report for line in text.splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("***"))


def export_usage(cache_path: Path | None = None) -> pl.DataFrame:
    """Every request ever answered into this cache (all runs), columns USAGE_COLUMNS minus from_cache."""
    cache = RequestCache(cache_path or request_cache_path())
    try:
        return cache.usage().sort("answered_at")
    finally:
        cache.close()
