"""What the teacher is asked with (TeacherConfig: part of every cache key) and how requests are sent
(ClientSettings: environment KD_TEACHER_*, never part of a key)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Message = dict[str, str]


class TeacherConfig(BaseModel, frozen=True, extra="forbid"):
    """What the teacher is asked with: model and generation settings. Part of every cache key."""

    model: str = Field("smollm2", description="Model name at the endpoint; 'smollm2' is the embedded teacher.")
    temperature: float = Field(
        0.0, ge=0, le=2, description="0 = greedy, so a cached answer is the answer; AICL third-party re-runs used 0.6."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling; None leaves the endpoint default.")
    max_tokens: int = Field(
        512, ge=1, le=32768,
        description="Per answer. A JSON bundle answer for 10 products is < 100 tokens; SmolLM2's rule lists and its "
                    "feedback turns run to 200-400, so 512 cuts only the answers that loop (recorded as truncated).",
    )
    seed: int | None = Field(0, description="Sent to endpoints that honour it (OpenAI, vLLM, llama.cpp).")

    def generation(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"model"}).items() if v is not None}


def request_timeout_s(max_tokens: int) -> float:
    """The default per-request time-out: a minute for queueing and prefill plus 0.4 s per token, so 512 tokens give
    ~4.5 minutes; longer is a hung endpoint. 2.5 tokens/s is the slowest teacher measured here: llm-katan serving
    SmolLM2 wrote 1,024 tokens in 400 s on 2 cores shared with five other jobs (load 10)."""
    return 60.0 + 0.4 * max_tokens


class ClientSettings(BaseSettings):
    """How requests are sent; never changes an answer, so never part of a cache key. Env: KD_TEACHER_*."""

    model_config = SettingsConfigDict(env_prefix="KD_TEACHER_", extra="ignore", frozen=True)

    max_concurrency: int = Field(2, ge=1, le=256, description="Threads sending requests; the embedded server is serial.")
    max_retries: int = Field(
        5, ge=0, le=20,
        description="Retries per request on 429, 5xx, time-outs, refused connections and malformed HTTP 200 replies. "
                    "The only retry layer: Prefect tasks do not retry on top.",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Per-request time-out; None sizes it to max_tokens (see request_timeout_s)."
    )
    backoff_initial_s: float = Field(1.0, ge=0, description="First retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on one retry delay (and on an honoured Retry-After).")
    price_per_1k_prompt_tokens: float | None = Field(None, ge=0, description="Currency per 1000 prompt tokens.")
    price_per_1k_completion_tokens: float | None = Field(None, ge=0, description="Currency per 1000 completion tokens.")
    progress_every_s: float = Field(15.0, ge=0, description="Seconds between progress log lines.")
    stall_warning_s: float = Field(
        60.0, gt=0, description="Warn (naming the endpoint) when no answer has arrived for this long during a run."
    )
