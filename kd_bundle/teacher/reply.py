"""What a teacher request yields: a Completion, or one of the errors below, and how a failure is described.

`read_reply` turns the raw HTTP 200 body into a Completion only when it is a real chat completion; anything else
is a MalformedReply, which the client retries like a 5xx and never caches. The helpers at the end classify HTTP
failures and describe them in one line without credentials.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class TeacherError(RuntimeError):
    """The endpoint refused a request for good (bad model name, bad key, bad request): retrying cannot help."""


class TeacherUnavailable(TeacherError):
    """The endpoint kept failing (refused connections, 429, 5xx, time-outs, malformed replies) after every retry."""


class TeacherTruncated(TeacherError):
    """The answer hit max_tokens where a full answer is required. Callers that can record
    a failure and go on catch it; `completion` holds the cut text (not cached)."""

    def __init__(self, message: str, completion: "Completion"):
        super().__init__(message)
        self.completion = completion


class MalformedReply(Exception):
    """An HTTP 200 that is not a usable chat completion; the message is one line, safe to log."""


@dataclass(frozen=True)
class Completion:
    text: str
    request_key: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    from_cache: bool
    structured: bool = False  # sent with a response_format the endpoint accepted
    truncated: bool = False  # stopped at max_tokens: the text is a prefix of an answer, not an answer


def is_cut(finish_reason: str | None, completion_tokens: int, max_tokens: int | None) -> bool:
    """finish_reason "length", or the whole budget spent: llm-katan reports "stop" for an answer it cut at
    max_tokens (measured: 1024 of 1024 tokens, finish_reason "stop")."""
    return finish_reason == "length" or (max_tokens is not None and completion_tokens >= max_tokens)


def read_reply(body: bytes, content_type: str, key: str, max_tokens: int | None) -> Completion:
    """A Completion from a raw HTTP 200 body, or MalformedReply saying what is wrong with it."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedReply(f"reply is not JSON (HTTP 200, {content_type or 'no content-type'}): {snippet(body)}") from None
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"reply has no choices (HTTP 200): {snippet(body)}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    text = message.get("content")
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply(f"reply has an empty answer (finish_reason {choice.get('finish_reason')!r})")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    tokens, finish_reason = _int(usage.get("completion_tokens")), choice.get("finish_reason")
    return Completion(text, key, _int(usage.get("prompt_tokens")), tokens, finish_reason, from_cache=False,
                      truncated=is_cut(finish_reason, tokens, max_tokens))


def snippet(body: bytes | str, limit: int = 80) -> str:
    """The start of a body on one line, for an error message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = re.sub(r"\s+", " ", text).strip()
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def retryable_status(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


def rejects_schema(status: int, message: str) -> bool:
    """An HTTP error about the response_format itself (an endpoint without structured output, or one that cannot
    compile this schema), as opposed to a bad request of any other kind."""
    return status in (400, 415, 422, 501) and SCHEMA_WORDS.search(message) is not None


SCHEMA_WORDS = re.compile(r"response_format|json_schema|schema|grammar|structured", re.IGNORECASE)


def retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def describe(exc: Exception | str | None) -> str:
    """One line for a failed attempt: the malformed-reply text, the HTTP status, or the exception."""
    if isinstance(exc, str):
        return exc
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__ if exc is not None else "no attempt"
    return f"{kind} (HTTP {status})" if status is not None else one_line(f"{kind}: {exc}")


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def redact_url(url: str) -> str:
    """The base URL without any user:password part, for logs and the usage table."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
