"""The durable request cache: one SQLite file of teacher answers by request key, and the usage export.

Only valid completions go in (the client checks them first), each committed before the caller sees it, so a
killed run resumes by sending only the requests whose answers are missing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from kd_bundle.config import settings
from kd_bundle.teacher.config import Message

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


def request_key(model: str, messages: list[Message], generation: dict[str, Any]) -> str:
    """Content hash of one request: model, messages and everything that changes the answer (sampling, max_tokens,
    response_format). The endpoint, key and client settings are deliberately not in it."""
    payload = json.dumps({"model": model, "messages": messages, "generation": generation}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def request_cache_path(root: Path | None = None) -> Path:
    return Path(root if root is not None else settings().store) / "teacher" / "requests.sqlite"


class RequestCache:
    """Answers by request key in one SQLite file: each insert is committed before the caller sees the answer."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (request_key TEXT PRIMARY KEY, model TEXT, endpoint TEXT,"
            " request TEXT, text TEXT, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,"
            " cost REAL, latency_s REAL, answered_at REAL)"
        )

    def get(self, key: str) -> sqlite3.Row | None:
        with self._lock:
            cursor = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM answers WHERE request_key = ?", (key,)
            )
            return cursor.fetchone()

    def put(self, key: str, row: dict[str, Any]) -> None:
        columns = ["request_key", *row]
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [key, *row.values()],
            )

    def usage(self, keys: Iterable[str] | None = None) -> pl.DataFrame:
        """Usage rows of every answer, or of `keys` only: looked up by primary key, since a results row asks for
        a few requests of a cache that grows with the whole grid."""
        query = ("SELECT request_key, model, endpoint, prompt_tokens, completion_tokens, cost, latency_s,"
                 " finish_reason, answered_at FROM answers")
        with self._lock:
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
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def export_usage(cache_path: Path | None = None) -> pl.DataFrame:
    """Every request ever answered into this cache (all runs), columns USAGE_COLUMNS minus from_cache."""
    cache = RequestCache(cache_path or request_cache_path())
    try:
        return cache.usage().sort("answered_at")
    finally:
        cache.close()
