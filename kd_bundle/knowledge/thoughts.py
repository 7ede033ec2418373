"""Knowledge format 3, thoughts: the teacher's reasoning path from product information to the user's intent to the
bundle composition, written with the ground truth in view (notes/paper.md section 5).

Each row keeps the thought together with its target (the true bundles as AICL's answer string and as item ids,
and the intents), so that it serves both as an in-context demonstration and as an SFT target:
`thought` + `answer` is a complete worked example for the session's `titles`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.data.prompts import (
    BUNDLE_DEFINITION,
    PROMPT_VERSION,
    bundle_positions,
    demonstration_text,
    format_bundles,
    format_intents,
    format_session,
)
from kd_bundle.knowledge.rules import CONVERSATION, training_sessions
from kd_bundle.teacher import TeacherClient

log = logging.getLogger("kd_bundle.teacher")

THOUGHTS_PROMPT_VERSION = f"{PROMPT_VERSION}/thoughts-v1"
THOUGHT_COLUMNS: dict[str, pl.DataType] = {
    "domain": pl.String,
    "session_id": pl.Int64,
    "titles": pl.List(pl.String),
    "thought": pl.String,  # the teacher's reasoning, cleaned (null when it failed)
    "answer": pl.String,  # the true bundles in AICL's answer format: {'bundle1': ['product1', 'product3']}
    "answer_intents": pl.String,  # the true intents: {'bundle1': 'intent'}
    "bundles": pl.List(pl.List(pl.String)),  # the true bundles as item ids
    "intents": pl.List(pl.String),
    "conversation": CONVERSATION,
    "request_keys": pl.List(pl.String),  # request-cache key of the teacher's answer: the extraction cost
    "truncated": pl.Int64,  # 1 when the answer was cut at max_tokens
    "error": pl.String,  # null when the thought is usable
    "knowledge": pl.String,  # products, reasoning, true bundles: the ICL demonstration retrieval hands on
}
THOUGHT_INSTRUCTION = (
    BUNDLE_DEFINITION
    + " Here are the products of a shopping session: {session}. The user bought these bundles: {bundles},"
    " with these intents: {intents}. Explain step by step why these bundles were formed."
    " Step 1: describe what each product is and what it is used for."
    " Step 2: infer the intent of the user behind each bundle."
    " Step 3: explain why exactly these products compose each bundle and why the other products do not belong to it."
    " Write plain sentences and do not repeat the bundles dictionary."
)


class ThoughtConfig(BaseModel, frozen=True, extra="forbid"):
    """Chain-of-thought settings; the prompt version is part of every task cache key."""

    min_words: int = Field(15, ge=1, description="A shorter answer is not a reasoning path; it is recorded as failed.")
    min_distinct_ratio: float = Field(
        0.3, ge=0, le=1, description="Distinct/total words below this is a degenerate loop (small teachers repeat)."
    )
    max_tokens: int | None = Field(
        768, ge=1, le=32768,
        description="Budget of one thought (None: the TeacherConfig's). Step 1 describes every product (up to 10), "
                    "so a full thought runs to 300-600 tokens; one cut at the budget is a recorded failure.",
    )
    prompt_version: str = Field(THOUGHTS_PROMPT_VERSION, description="Bump when the prompt changes.")


def distill_thoughts(sessions: pl.DataFrame, domain: str, cfg: ThoughtConfig, client: TeacherClient) -> pl.DataFrame:
    """One thought per training session, with its targets (THOUGHT_COLUMNS). Failures keep their raw answer."""
    train = training_sessions(sessions, "distill_thoughts")
    rows = client.map(lambda session: _think(session, domain, cfg, client), train.to_dicts(), label=f"thoughts {domain}")
    thoughts = pl.DataFrame(rows, schema=THOUGHT_COLUMNS)
    log.info("thoughts %s: %d sessions, %d failed", domain, thoughts.height,
             thoughts.filter(pl.col("error").is_not_null()).height)
    return thoughts


def thought_prompt(titles: list[str], positions: list[list[int]], intents: list[str]) -> str:
    return (
        THOUGHT_INSTRUCTION.replace("{session}", format_session(titles))
        .replace("{bundles}", format_bundles(positions))
        .replace("{intents}", format_intents(intents))
    )


def clean_thought(text: str, min_words: int, min_distinct_ratio: float = 0.0) -> tuple[str | None, str | None]:
    """(thought, error): code fences and a trailing bundles dictionary removed; too short, no prose, or one phrase
    repeated over and over is an error."""
    cleaned = re.sub(r"```.*?```", " ", text or "", flags=re.S)
    cleaned = re.sub(r"\{[^{}]*\}\s*$", "", cleaned.strip()).strip()
    words = re.findall(r"[A-Za-z]{2,}", cleaned)
    if len(words) < min_words:
        return None, f"answer has {len(words)} words of prose; a reasoning path needs {min_words}+"
    distinct = len({w.lower() for w in words}) / len(words)
    if distinct < min_distinct_ratio:
        return None, f"answer repeats itself ({distinct:.2f} distinct words per word)"
    return cleaned, None


def _think(session: dict[str, Any], domain: str, cfg: ThoughtConfig, client: TeacherClient) -> dict[str, Any]:
    positions = bundle_positions(session["bundles"], session["item_ids"])
    conversation = [{"role": "user", "content": thought_prompt(session["titles"], positions, session["intents"])}]
    completion = client.complete_or_cut(list(conversation), max_tokens=cfg.max_tokens)
    answer, truncated = completion.text, int(completion.truncated)
    if truncated:  # half a reasoning path is not knowledge; the client counted it as truncated
        thought, error = None, f"answer cut at max_tokens={cfg.max_tokens or client.cfg.max_tokens}"
    else:
        thought, error = clean_thought(answer, cfg.min_words, cfg.min_distinct_ratio)
    conversation.append({"role": "assistant", "content": answer})
    if error:
        client.note_failure()
    return {
        "domain": domain,
        "session_id": session["session_id"],
        "titles": session["titles"],
        "thought": thought,
        "answer": format_bundles(positions),
        "answer_intents": format_intents(session["intents"]),
        "bundles": session["bundles"],
        "intents": session["intents"],
        "conversation": conversation,
        "request_keys": [completion.request_key],
        "truncated": truncated,
        "error": error,
        "knowledge": demonstration_text(session["titles"], positions, thought) if thought else None,
    }
