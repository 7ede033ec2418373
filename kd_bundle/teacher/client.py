"""TeacherClient: cached, retried, bounded-concurrency chat completions against one OpenAI-compatible endpoint.

A request is answered from the request cache when it was ever paid for, else sent. Transient failures (429, 5xx,
time-outs, refused or dropped connections) and malformed HTTP 200 replies (not JSON, no choices, empty answer)
are retried with exponential backoff; once retries are spent a TeacherUnavailable names the endpoint in one line.
Only valid completions are cached. A `response_format` the endpoint rejects is detected once per endpoint and
model and logged once: the request is re-sent with the schema's strict-mode subset (what OpenAI accepts), and if
that is refused too, as plain text (callers parse it with the tolerant parser).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import polars as pl
from pydantic import SecretStr

from kd_bundle.config import settings
from kd_bundle.teacher.answer_schema import portable_format
from kd_bundle.teacher.config import ClientSettings, Message, TeacherConfig, request_timeout_s
from kd_bundle.teacher.pool import run_in_pool
from kd_bundle.teacher.progress import Counters, Progress
from kd_bundle.teacher.reply import (
    Completion,
    MalformedReply,
    TeacherError,
    TeacherTruncated,
    TeacherUnavailable,
    describe,
    is_cut,
    one_line,
    read_reply,
    redact_url,
    rejects_schema,
    retry_after,
    retryable_status,
)
from kd_bundle.teacher.request_cache import USAGE_COLUMNS, RequestCache, request_cache_path, request_key

log = logging.getLogger("kd_bundle.teacher")

T = TypeVar("T")
R = TypeVar("R")

# "endpoint model" -> the structured output it took: "portable" (refused the full schema, took OpenAI's strict
# subset) or "plain" (refused both). Each refusal is learnt once per process.
_SCHEMA_LEVELS = ("full", "portable", "plain")  # an endpoint only moves right
_SCHEMA_LEVEL: dict[str, str] = {}
_SCHEMA_LEVEL_LOCK = threading.Lock()
_CUT = "answer cut at max_tokens"


class _SchemaRejected(Exception):
    """The endpoint answered 400 (or similar) to the response_format itself."""


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
        self.endpoint = redact_url(self.base_url)
        self._api_key = api_key or env.teacher_api_key
        self.cache = RequestCache(cache_path or request_cache_path())
        self.on_progress = on_progress
        self.before_send = before_send  # e.g. EmbeddedTeacher.ensure: start a server only when something is sent
        self._counters = Counters()
        self._lock = threading.Lock()
        self._openai: Any = None
        self._last_answer = time.monotonic()

    # ---- one request -------------------------------------------------------------------------------------
    def complete(
        self,
        messages: list[Message],
        *,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        require_full: bool = False,
    ) -> Completion:
        """The teacher's answer to `messages`: from the cache if it was ever paid for, else from the endpoint.

        `response_format` (e.g. kd_bundle.teacher.answer_schema.detection_format) asks for structured output; an endpoint
        that rejects it gets the plain request instead (`Completion.structured` says which). `max_tokens`
        overrides the config's budget for this request. With `require_full`, an answer cut at max_tokens raises
        TeacherTruncated (counted, not cached); without it, it comes back with `truncated` set."""
        generation = self.cfg.generation()
        if max_tokens is not None:
            generation["max_tokens"] = max_tokens
        level = self._schema_level()
        if response_format is not None and level != "full":
            response_format = None if level == "plain" else portable_format(response_format) or response_format
        while response_format is not None:
            try:
                return self._answer(messages, {**generation, "response_format": response_format}, require_full)
            except _SchemaRejected as rejected:
                response_format = portable_format(response_format)  # None: it was portable already
                self._remember_schema_level("portable" if response_format is not None else "plain", str(rejected))
        return self._answer(messages, generation, require_full)

    def complete_or_cut(self, messages: list[Message], **kwargs: Any) -> Completion:
        """`complete(require_full=True)` for callers that record a cut answer as a failure and go on: a full answer,
        or the cut one with `truncated` set (counted, never cached) instead of TeacherTruncated."""
        try:
            return self.complete(messages, require_full=True, **kwargs)
        except TeacherTruncated as cut:
            return cut.completion

    def accepts_response_format(self) -> bool:
        """False once this endpoint (for this model) has rejected every response_format in this process."""
        return self._schema_level() != "plain"

    def _schema_level(self) -> str:
        with _SCHEMA_LEVEL_LOCK:
            return _SCHEMA_LEVEL.get(self._schema_key, _SCHEMA_LEVELS[0])

    @property
    def _schema_key(self) -> str:
        return f"{self.endpoint} {self.cfg.model}"

    def note_failure(self, n: int = 1) -> None:
        """Callers report answers they could not use (parse failures), for progress lines and summaries."""
        with self._lock:
            self._counters.failures += n

    # ---- many units of work ------------------------------------------------------------------------------
    def map(self, fn: Callable[[T], R], items: list[T], label: str = "requests") -> list[R]:
        """`fn` over `items` on at most `max_concurrency` threads, in order. `fn` calls `complete` (often several
        times, a conversation). On the first error the pending items are cancelled, the running ones finish (their
        answers are cached), and the error is raised. Progress is logged every `progress_every_s`, and a warning
        naming the endpoint every `stall_warning_s` without an answer."""
        s = self.client_settings
        clock = {"report": time.monotonic(), "warned": time.monotonic(), "done": 0}
        self._last_answer = time.monotonic()
        self._report(label, 0, len(items))

        def tick(done: int) -> None:
            now, clock["done"] = time.monotonic(), done
            if now - clock["report"] >= s.progress_every_s:
                clock["report"] = now
                self._report(label, done, len(items))
            silent = now - self._last_answer
            if done < len(items) and silent >= s.stall_warning_s and now - clock["warned"] >= s.stall_warning_s:
                clock["warned"] = now
                log.warning("teacher %s (model %r): no answer for %.0f s (%d/%d done; time-out %.0f s per request); "
                            "the endpoint may be hung or overloaded", self.endpoint, self.cfg.model, silent, done,
                            len(items), self._timeout(self.cfg.max_tokens))

        try:
            return run_in_pool(fn, items, s.max_concurrency, tick)
        finally:
            self._report(label, int(clock["done"]), len(items))

    def progress(self, label: str = "requests", done: int = 0, total: int = 0) -> Progress:
        c = self._counters
        return Progress(label, done, total, c.requests, c.sent, c.cached, c.tokens, c.failures, c.truncated)

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
    def _answer(self, messages: list[Message], generation: dict[str, Any], require_full: bool) -> Completion:
        key = request_key(self.cfg.model, messages, generation)
        structured = "response_format" in generation
        hit = self.cache.get(key)
        cut = hit is not None and is_cut(hit[1], hit[3] or 0, generation.get("max_tokens"))
        # An empty cached text is a failure an older client stored as an answer: asked again, and replaced.
        if hit is not None and hit[0] and not (require_full and cut):
            completion = Completion(hit[0], key, hit[2] or 0, hit[3] or 0, hit[1], from_cache=True,
                                    structured=structured, truncated=cut)
        else:
            completion = self._send(key, messages, generation, require_full)
        self._count(completion)
        if completion.truncated and require_full:
            raise TeacherTruncated(
                f"teacher endpoint {self.endpoint} (model {self.cfg.model!r}) cut the answer at max_tokens="
                f"{generation.get('max_tokens')} (finish_reason {completion.finish_reason!r}, "
                f"{completion.completion_tokens} tokens); "
                "not used and not cached", completion)
        return completion

    def _send(self, key: str, messages: list[Message], generation: dict[str, Any], require_full: bool) -> Completion:
        import openai

        if self.before_send is not None:
            self.before_send()
        attempts = self.client_settings.max_retries + 1
        last: Exception | str | None = None
        truncated: Completion | None = None
        for attempt in range(attempts):
            started, delay = time.monotonic(), None
            try:
                raw = self._client().chat.completions.with_raw_response.create(
                    model=self.cfg.model, messages=messages, timeout=self._timeout(generation.get("max_tokens")),
                    **generation,
                )
                http = raw.http_response
                completion = read_reply(http.content, http.headers.get("content-type", ""), key,
                                        generation.get("max_tokens"))
            except openai.APIStatusError as exc:
                if "response_format" in generation and rejects_schema(exc.status_code, str(exc)):
                    raise _SchemaRejected(f"HTTP {exc.status_code}: {self._redact(str(exc))[:200]}") from None
                if not retryable_status(exc.status_code):
                    raise TeacherError(
                        f"teacher endpoint {self.endpoint} rejected the request for model {self.cfg.model!r} "
                        f"(HTTP {exc.status_code}): {one_line(self._redact(str(exc)))[:300]}"
                    ) from None
                last, delay = exc, self._delay(attempt, retry_after(exc))
            except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
                last = exc
            except MalformedReply as exc:
                last = str(exc)
            else:
                if not (completion.truncated and require_full):
                    return self._store(key, messages, generation, completion, time.monotonic() - started)
                truncated, last = completion, _CUT
                if generation.get("temperature", 0) == 0:
                    break  # greedy decoding repeats the same cut answer: retrying only pays twice
            if attempt + 1 < attempts:
                delay = self._delay(attempt, None) if delay is None else delay
                log.warning("teacher %s: %s; retry %d/%d in %.1f s", self.endpoint, self._redact(describe(last)),
                            attempt + 1, attempts - 1, delay)
                time.sleep(delay)
        if truncated is not None and last == _CUT:
            return truncated  # the caller raises TeacherTruncated; nothing cached
        raise TeacherUnavailable(
            f"teacher endpoint {self.endpoint} (model {self.cfg.model!r}) failed {attempts} time(s); last error: "
            f"{one_line(self._redact(describe(last)))}. Answers received so far are cached in {self.cache.path}; "
            "rerun to resume. Is the server up (`python -m kd_bundle teacher-server start`) and KD_TEACHER_BASE_URL right?"
        )

    def _store(self, key: str, messages: list[Message], generation: dict[str, Any], completion: Completion,
               latency: float) -> Completion:
        self.cache.put(
            key,
            {
                "model": self.cfg.model,
                "endpoint": self.endpoint,
                "request": json.dumps({"messages": messages, "generation": generation}),
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "cost": self._cost(completion.prompt_tokens, completion.completion_tokens),
                "latency_s": latency,
                "answered_at": time.time(),
            },
        )
        return replace(completion, structured="response_format" in generation)

    def _remember_schema_level(self, level: str, reason: str) -> None:
        with _SCHEMA_LEVEL_LOCK:
            current = _SCHEMA_LEVEL.get(self._schema_key, _SCHEMA_LEVELS[0])
            first = _SCHEMA_LEVELS.index(level) > _SCHEMA_LEVELS.index(current)
            if first:
                _SCHEMA_LEVEL[self._schema_key] = level
        if first and level == "portable":
            log.warning("teacher endpoint %s (model %r) refused the full answer schema (%s); asking with its "
                        "strict-mode subset (every key required, no length keywords)", self.endpoint, self.cfg.model,
                        one_line(reason))
        elif first:
            log.warning("teacher endpoint %s (model %r) does not accept response_format (%s); falling back to plain "
                        "text + tolerant parser", self.endpoint, self.cfg.model, one_line(reason))

    def _client(self) -> Any:
        with self._lock:
            if self._openai is None:
                import openai

                self._openai = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key.get_secret_value() or "none",
                    timeout=self._timeout(self.cfg.max_tokens),
                    max_retries=0,  # retries are ours: logged, bounded, and with a clear final error
                )
            return self._openai

    def _timeout(self, max_tokens: int | None) -> float:
        return self.client_settings.timeout_s or request_timeout_s(max_tokens or self.cfg.max_tokens)

    def _count(self, completion: Completion) -> None:
        with self._lock:
            c = self._counters
            c.requests += 1
            c.sent += not completion.from_cache
            c.cached += completion.from_cache
            c.tokens += completion.prompt_tokens + completion.completion_tokens
            c.truncated += completion.truncated
            c.keys.setdefault(completion.request_key, completion.from_cache)
            self._last_answer = time.monotonic()

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
