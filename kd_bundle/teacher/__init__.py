"""The teacher: one client over any OpenAI-compatible chat endpoint, paid for once.

Every valid answer is written to a durable SQLite request cache (under the store root) the moment it arrives, keyed
by the hash of (model, messages, generation settings, response_format). A run that is killed and started again
therefore sends only the requests whose answers are missing. Requests run in a bounded thread pool, transient
failures (429, 5xx, time-outs, refused or dropped connections, malformed HTTP 200 replies) are retried with
exponential backoff, and once retries are spent a `TeacherUnavailable` names the endpoint. Token usage (and cost,
where a price is configured) is kept per request and exported as a Parquet-ready frame.

The endpoint and API key come from the environment (`KD_TEACHER_BASE_URL`, `KD_TEACHER_API_KEY`); the key is held
in a SecretStr, sent only in the Authorization header, and never logged, cached, hashed or written to an artifact.
The library logs with the standard library (logger "kd_bundle.teacher") and never imports Prefect.

Takes chat requests, gives their completions and token usage. This package gathers the public names;
each job lives in its own module: config (TeacherConfig, ClientSettings), request_cache (the SQLite cache, usage
export), reply (Completion, errors, reading a reply), client (TeacherClient), pool (the thread pool), progress
(counters, the progress line), answer_schema (the JSON schema of a bundle answer, for structured output), and the
embedded teacher: server (start, reuse, stop) over backends and llama_server (llama.cpp's server).
"""

from __future__ import annotations

from kd_bundle.teacher.answer_schema import bundle_answer_schema, detection_format, intent_format
from kd_bundle.teacher.client import TeacherClient
from kd_bundle.teacher.config import ClientSettings, Message, TeacherConfig, request_timeout_s
from kd_bundle.teacher.progress import Progress
from kd_bundle.teacher.reply import Completion, TeacherError, TeacherTruncated, TeacherUnavailable, redact_url
from kd_bundle.teacher.request_cache import (
    USAGE_COLUMNS,
    RequestCache,
    RequestCacheDamaged,
    RequestCacheError,
    RequestCacheLocked,
    export_usage,
    request_cache_path,
    request_key,
)

__all__ = [
    "USAGE_COLUMNS", "ClientSettings", "Completion", "Message", "Progress", "RequestCache", "RequestCacheDamaged",
    "RequestCacheError", "RequestCacheLocked", "TeacherClient",
    "TeacherConfig", "TeacherError", "TeacherTruncated", "TeacherUnavailable", "bundle_answer_schema",
    "detection_format", "export_usage", "intent_format", "redact_url", "request_cache_path", "request_key",
    "request_timeout_s",
]
