"""The teacher row of every results table: the teacher itself detects bundles (and intents) on the test sessions,
with AICL's prompt alone or with retrieved knowledge in front of it (notes/paper.md section 4, step 6).

Output is a predictions frame (kd_bundle.evaluation.predictions.PREDICTION_COLUMNS) scored like every other method. Each
request asks the endpoint for structured output (the session's answer schema, kd_bundle.teacher.answer_schema); an endpoint
that rejects it is asked in plain text and read by the tolerant parser. An answer that cannot be parsed, or that was
cut at max_tokens, keeps its raw text and null bundles: the metrics count the session as failed.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.data.parsing import parse_bundles, parse_intents
from kd_bundle.data.prompts import (
    DETECT_INSTRUCTION,
    DETECT_WITH_KNOWLEDGE,
    INTENT_INSTRUCTION,
    PROMPT_VERSION,
    format_session,
)
from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS, bundles_from_positions
from kd_bundle.teacher import TeacherClient
from kd_bundle.teacher.answer_schema import detection_format, intent_format

log = logging.getLogger("kd_bundle.teacher")

TEACHER_PREDICT_PROMPT_VERSION = f"{PROMPT_VERSION}/teacher-predict-v1"
KNOWLEDGE_HEADER = "Here is some knowledge about how products form bundles:\n{knowledge}\n\n"
RAW_SEPARATOR = "\n----- intents -----\n"
TRUNCATED_MARK = "\n----- cut at max_tokens -----"


class TeacherPredictConfig(BaseModel, frozen=True, extra="forbid"):
    """How the teacher is asked on test sessions; part of the task cache key."""

    intents: bool = Field(True, description="Ask AICL's 3-5-word intent turn after the bundles.")
    max_knowledge_blocks: int = Field(3, ge=1, description="Retrieved blocks put in one prompt (best first).")
    structured_output: bool = Field(
        True, description="Ask for the answer schema (response_format); False measures the tolerant parser alone."
    )
    prompt_version: str = Field(TEACHER_PREDICT_PROMPT_VERSION, description="Bump when a prompt changes.")


def predict_bundles(
    sessions: pl.DataFrame,
    cfg: TeacherPredictConfig,
    client: TeacherClient,
    knowledge: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Teacher predictions for every row of `sessions` (PREDICTION_COLUMNS, in session order).

    `knowledge`, when given, has `session_id` and `knowledge` (a string, or a list of blocks best first, as
    kd_bundle.student.retrieval's RETRIEVED_COLUMNS holds them; several rows per session are concatenated in order).
    """
    missing = [c for c in ("session_id", "item_ids", "titles") if c not in sessions.columns]
    if missing:
        raise ValueError(f"predict_bundles: missing columns {missing}")
    blocks = _knowledge_blocks(knowledge)
    jobs = [(row, blocks.get(row["session_id"], [])[: cfg.max_knowledge_blocks]) for row in sessions.to_dicts()]
    label = "predict" + (" with knowledge" if knowledge is not None else "")
    rows = client.map(lambda job: _predict(job[0], job[1], cfg, client), jobs, label=label)
    predictions = pl.DataFrame(rows, schema=PREDICTION_COLUMNS)
    log.info("teacher %s: %d sessions, %d unparsable", label, predictions.height,
             predictions.filter(pl.col("bundles").is_null()).height)
    return predictions


def detect_prompt(titles: list[str], knowledge_blocks: list[str]) -> str:
    session = format_session(titles)
    if not knowledge_blocks:
        return DETECT_INSTRUCTION.replace("{session}", session)
    header = KNOWLEDGE_HEADER.replace("{knowledge}", "\n\n".join(knowledge_blocks))
    return header + DETECT_WITH_KNOWLEDGE.replace("{session}", session)


def _predict(session: dict[str, Any], blocks: list[str], cfg: TeacherPredictConfig, client: TeacherClient) -> dict[str, Any]:
    n_items = len(session["item_ids"])
    conversation = [{"role": "user", "content": detect_prompt(session["titles"], blocks)}]
    schema = detection_format(n_items) if cfg.structured_output and n_items >= 2 else None
    answer, complete = _ask(client, conversation, schema)
    parsed = parse_bundles(answer, n_items) if complete else None
    raw, intents = answer if complete else answer + TRUNCATED_MARK, parsed.intents if parsed else None
    if parsed is None or parsed.bundles is None:
        client.note_failure()
    elif cfg.intents:
        conversation += [{"role": "assistant", "content": answer}, {"role": "user", "content": INTENT_INSTRUCTION}]
        intent_format_ = intent_format(len(parsed.bundles)) if cfg.structured_output else None
        intent_answer, intent_complete = _ask(client, conversation, intent_format_)
        raw += RAW_SEPARATOR + (intent_answer if intent_complete else intent_answer + TRUNCATED_MARK)
        intents = (parse_intents(intent_answer) if intent_complete else None) or intents
    bundles = None if parsed is None or parsed.bundles is None else bundles_from_positions(parsed.bundles, session["item_ids"])
    return {"session_id": session["session_id"], "bundles": bundles, "intents": intents, "raw": raw}


def _ask(client: TeacherClient, conversation: list[dict[str, str]], response_format: dict[str, Any] | None) -> tuple[str, bool]:
    """(answer, complete): an answer cut at max_tokens is kept for the raw column but never parsed as knowledge."""
    completion = client.complete_or_cut(list(conversation), response_format=response_format)
    return completion.text, not completion.truncated


def _knowledge_blocks(knowledge: pl.DataFrame | None) -> dict[int, list[str]]:
    if knowledge is None:
        return {}
    missing = [c for c in ("session_id", "knowledge") if c not in knowledge.columns]
    if missing:
        raise ValueError(f"predict_bundles: knowledge frame lacks columns {missing}; found {knowledge.columns}")
    blocks: dict[int, list[str]] = {}
    for session_id, value in knowledge.select("session_id", "knowledge").iter_rows():
        values = value if isinstance(value, list) else [value]
        blocks.setdefault(session_id, []).extend(v for v in values if v)
    return blocks
