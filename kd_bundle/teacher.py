"""The teacher: one client over any OpenAI-compatible chat endpoint, paid for once.

Every answer is written to a durable SQLite request cache (under the store root) the moment it arrives, keyed by
the hash of (model, messages, generation settings). A run that is killed and started again therefore sends only
the requests whose answers are missing. Requests run in a bounded thread pool, transient failures (429, 5xx,
time-outs, refused or dropped connections) are retried with exponential backoff, and once retries are spent a
`TeacherUnavailable` names the endpoint. Token usage (and cost, where a price is configured) is kept per request
and exported as a Parquet-ready frame.

The endpoint and API key come from the environment (`KD_TEACHER_BASE_URL`, `KD_TEACHER_API_KEY`); the key is held
in a SecretStr, sent only in the Authorization header, and never logged, cached, hashed or written to an artifact.
The library logs with the standard library (logger "kd_bundle.teacher") and never imports Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sqlite3
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from kd_bundle.config import settings

log = logging.getLogger("kd_bundle.teacher")

Message = dict[str, str]
T = TypeVar("T")
R = TypeVar("R")

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


class TeacherConfig(BaseModel, frozen=True):
    """What the teacher is asked with: model and generation settings. Part of every cache key."""

    model: str = Field("smollm2", description="Model name at the endpoint; 'smollm2' is the embedded llm-katan teacher.")
    temperature: float = Field(
        0.0, ge=0, le=2, description="0 = greedy, so a cached answer is the answer; AICL third-party re-runs used 0.6."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; None leaves the endpoint default.")
    max_tokens: int = Field(256, ge=1, le=32768, description="AICL answers are short dicts; rule summaries need more.")
    seed: int | None = Field(0, description="Sent to endpoints that honour it (OpenAI, vLLM).")

    def generation(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"model"}).items() if v is not None}


class ClientSettings(BaseSettings):
    """How requests are sent; never changes an answer, so never part of a cache key. Env: KD_TEACHER_*."""

    model_config = SettingsConfigDict(env_prefix="KD_TEACHER_", extra="ignore", frozen=True)

    max_concurrency: int = Field(2, ge=1, le=256, description="Threads sending requests; the embedded server is serial.")
    max_retries: int = Field(5, ge=0, le=20, description="Retries per request on 429, 5xx, time-outs, refused connections.")
    timeout_s: float = Field(600.0, gt=0, description="Per-request time-out; a 135M model on 2 CPU cores is slow.")
    backoff_initial_s: float = Field(1.0, ge=0, description="First retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on one retry delay (and on an honoured Retry-After).")
    price_per_1k_prompt_tokens: float | None = Field(None, ge=0, description="Currency per 1000 prompt tokens.")
    price_per_1k_completion_tokens: float | None = Field(None, ge=0, description="Currency per 1000 completion tokens.")
    progress_every_s: float = Field(15.0, ge=0, description="Seconds between progress log lines.")


class TeacherError(RuntimeError):
    """The endpoint refused a request for good (bad model name, bad key, bad request): retrying cannot help."""


class TeacherUnavailable(TeacherError):
    """The endpoint kept failing (refused connections, 429, 5xx, time-outs) after every retry."""


@dataclass(frozen=True)
class Completion:
    text: str
    request_key: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    from_cache: bool


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress reporting (logs here; a Prefect progress artifact in the task layer)."""

    label: str
    done: int
    total: int
    requests: int
    sent: int
    cached: int
    tokens: int
    failures: int

    def line(self) -> str:
        return (
            f"teacher {self.label}: {self.done}/{self.total} done, {self.requests} requests "
            f"({self.sent} sent, {self.cached} cached), {self.tokens} tokens, {self.failures} failures"
        )


def request_key(model: str, messages: list[Message], generation: dict[str, Any]) -> str:
    """Content hash of one request. The endpoint, key and client settings are deliberately not in it."""
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
        query = ("SELECT request_key, model, endpoint, prompt_tokens, completion_tokens, cost, latency_s,"
                 " finish_reason, answered_at FROM answers")
        with self._lock:
            rows = self._db.execute(query).fetchall()
        names = [c for c in USAGE_COLUMNS if c != "from_cache"]
        frame = pl.DataFrame(rows, schema={c: USAGE_COLUMNS[c] for c in names}, orient="row")
        if keys is not None:
            frame = frame.filter(pl.col("request_key").is_in(list(keys)))
        return frame

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class _Counters:
    requests: int = 0
    sent: int = 0
    cached: int = 0
    tokens: int = 0
    failures: int = 0
    keys: dict[str, bool] = field(default_factory=dict)  # request key -> answered from cache in this run


class TeacherClient:
    """Cached, retried, bounded-concurrency chat completions against one OpenAI-compatible endpoint."""

    def __init__(
        self,
        cfg: TeacherConfig,
        client: ClientSettings | None = None,
        *,
        base_url: str | None = None,
        api_key: SecretStr | None = None,
        cache_path: Path | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        before_send: Callable[[], Any] | None = None,
    ):
        env = settings()
        self.cfg = cfg
        self.client_settings = client or ClientSettings()
        self.base_url = base_url or env.teacher_base_url
        self.endpoint = _redact_url(self.base_url)
        self._api_key = api_key or env.teacher_api_key
        self.cache = RequestCache(cache_path or request_cache_path())
        self.on_progress = on_progress
        self.before_send = before_send  # e.g. EmbeddedTeacher.ensure: start a server only when something is sent
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._openai: Any = None

    # ---- one request -------------------------------------------------------------------------------------
    def complete(self, messages: list[Message]) -> Completion:
        """The teacher's answer to `messages`: from the cache if it was ever paid for, else from the endpoint."""
        generation = self.cfg.generation()
        key = request_key(self.cfg.model, messages, generation)
        hit = self.cache.get(key)
        if hit is not None:
            completion = Completion(hit[0], key, hit[2] or 0, hit[3] or 0, hit[1], from_cache=True)
        else:
            completion = self._send(key, messages, generation)
        self._count(completion)
        return completion

    def note_failure(self, n: int = 1) -> None:
        """Callers report answers they could not use (parse failures), for progress lines and summaries."""
        with self._lock:
            self._counters.failures += n

    # ---- many units of work ------------------------------------------------------------------------------
    def map(self, fn: Callable[[T], R], items: list[T], label: str = "requests") -> list[R]:
        """`fn` over `items` on at most `max_concurrency` threads, in order. `fn` calls `complete` (often several
        times, a conversation). On the first error the pending items are cancelled, the running ones finish (their
        answers are cached), and the error is raised."""
        results: list[Any] = [None] * len(items)
        done, last_report = 0, time.monotonic()
        self._report(label, 0, len(items))
        with ThreadPoolExecutor(max_workers=self.client_settings.max_concurrency, thread_name_prefix="teacher") as pool:
            stop = threading.Event()
            futures = {pool.submit(_guarded, fn, item, stop): index for index, item in enumerate(items)}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                    for future in sorted(finished, key=futures.get):
                        results[futures[future]] = future.result()  # raises the first error
                        done += 1
                    if time.monotonic() - last_report >= self.client_settings.progress_every_s:
                        last_report = time.monotonic()
                        self._report(label, done, len(items))
            except BaseException as error:  # an error, or Ctrl-C: nothing new starts; running ones finish, cached
                stop.set()
                for future in pending:
                    future.cancel()
                self._report(label, done, len(items))
                if isinstance(error, _Stopped):  # raise the error that stopped the others
                    wait(pending)
                    causes = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
                    raise next(e for e in causes if not isinstance(e, _Stopped)) from None
                raise
        self._report(label, done, len(items))
        return results

    def progress(self, label: str = "requests", done: int = 0, total: int = 0) -> Progress:
        c = self._counters
        return Progress(label, done, total, c.requests, c.sent, c.cached, c.tokens, c.failures)

    def usage_frame(self) -> pl.DataFrame:
        """One row per distinct request this client made (sent or reused), columns USAGE_COLUMNS."""
        with self._lock:
            keys = dict(self._counters.keys)
        usage = self.cache.usage(keys)
        flags = pl.DataFrame({"request_key": list(keys), "from_cache": list(keys.values())},
                             schema={"request_key": pl.String, "from_cache": pl.Boolean})
        return usage.join(flags, on="request_key", how="inner").select(list(USAGE_COLUMNS)).sort("answered_at", "request_key")

    def close(self) -> None:
        if self._openai is not None:
            self._openai.close()
        self.cache.close()

    def __enter__(self) -> "TeacherClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------------------------
    def _send(self, key: str, messages: list[Message], generation: dict[str, Any]) -> Completion:
        import openai

        if self.before_send is not None:
            self.before_send()
        attempts = self.client_settings.max_retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            started = time.monotonic()
            try:
                response = self._client().chat.completions.create(
                    model=self.cfg.model, messages=messages, **generation
                )
            except openai.APIStatusError as exc:
                if not _retryable_status(exc.status_code):
                    raise TeacherError(
                        f"teacher endpoint {self.endpoint} rejected the request for model {self.cfg.model!r} "
                        f"(HTTP {exc.status_code}): {self._redact(str(exc))[:300]}"
                    ) from None
                last = exc
                delay = self._delay(attempt, _retry_after(exc))
            except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
                last = exc
                delay = self._delay(attempt, None)
            else:
                return self._store(key, messages, response, time.monotonic() - started)
            if attempt + 1 < attempts:
                log.warning(
                    "teacher %s: %s; retry %d/%d in %.1f s", self.endpoint, _describe(last), attempt + 1,
                    attempts - 1, delay,
                )
                time.sleep(delay)
        raise TeacherUnavailable(
            f"teacher endpoint {self.endpoint} (model {self.cfg.model!r}) failed {attempts} time(s); last error: "
            f"{self._redact(_describe(last))}. Answers received so far are cached in {self.cache.path}; "
            "rerun to resume. Is the server up (`python -m kd_bundle teacher-server start`) and KD_TEACHER_BASE_URL right?"
        )

    def _store(self, key: str, messages: list[Message], response: Any, latency: float) -> Completion:
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None and choice.message is not None else None) or ""
        usage = response.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        finish_reason = getattr(choice, "finish_reason", None)
        self.cache.put(
            key,
            {
                "model": self.cfg.model,
                "endpoint": self.endpoint,
                "request": json.dumps({"messages": messages, "generation": self.cfg.generation()}),
                "text": text,
                "finish_reason": finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost": self._cost(prompt_tokens, completion_tokens),
                "latency_s": latency,
                "answered_at": time.time(),
            },
        )
        return Completion(text, key, prompt_tokens, completion_tokens, finish_reason, from_cache=False)

    def _client(self) -> Any:
        with self._lock:
            if self._openai is None:
                import openai

                self._openai = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key.get_secret_value() or "none",
                    timeout=self.client_settings.timeout_s,
                    max_retries=0,  # retries are ours: logged, bounded, and with a clear final error
                )
            return self._openai

    def _count(self, completion: Completion) -> None:
        with self._lock:
            c = self._counters
            c.requests += 1
            c.sent += not completion.from_cache
            c.cached += completion.from_cache
            c.tokens += completion.prompt_tokens + completion.completion_tokens
            c.keys.setdefault(completion.request_key, completion.from_cache)

    def _report(self, label: str, done: int, total: int) -> None:
        snapshot = self.progress(label, done, total)
        log.info(snapshot.line())
        if self.on_progress is not None:
            self.on_progress(snapshot)

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        s = self.client_settings
        if s.price_per_1k_prompt_tokens is None and s.price_per_1k_completion_tokens is None:
            return None
        return (prompt_tokens * (s.price_per_1k_prompt_tokens or 0.0)
                + completion_tokens * (s.price_per_1k_completion_tokens or 0.0)) / 1000.0

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        s = self.client_settings
        if retry_after is not None:
            return min(retry_after, s.backoff_max_s)
        return min(s.backoff_initial_s * 2**attempt, s.backoff_max_s) * random.uniform(0.5, 1.0)

    def _redact(self, text: str) -> str:
        secret = self._api_key.get_secret_value()
        return text.replace(secret, "***") if secret and len(secret) >= 4 else text


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


def export_usage(cache_path: Path | None = None) -> pl.DataFrame:
    """Every request ever answered into this cache (all runs), columns USAGE_COLUMNS minus from_cache."""
    cache = RequestCache(cache_path or request_cache_path())
    try:
        return cache.usage().sort("answered_at")
    finally:
        cache.close()


def _retryable_status(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _describe(exc: Exception | None) -> str:
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__ if exc is not None else "no attempt"
    return f"{kind} (HTTP {status})" if status is not None else f"{kind}: {exc}"


def _redact_url(url: str) -> str:
    """The base URL without any user:password part, for logs and the usage table."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
