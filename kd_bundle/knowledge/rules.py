"""Knowledge format 2, rules: the teacher's self-reflection on training sessions (notes/paper.md sections 4-5).

For each training session the teacher runs AICL's conversation (kd_bundle.knowledge.reflection): initial detection, the
3-turn self-correction with intents, auto-feedback rounds with the typed errors, a turn explaining the causes of
its errors against the ground truth, and finally AICL's "which rules do you find". The rules of every session are
kept with the whole conversation, the labels of its steps, and the teacher's first answer scored (strict precision,
error codes: the session's difficulty for the teacher) in SESSION_RULE_COLUMNS; a consolidated, de-duplicated rule
set per domain counts how many sessions support each rule (RULE_COLUMNS).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.data.prompts import PROMPT_VERSION, RULES_QUESTION, bundle_positions
from kd_bundle.knowledge.reflection import (  # noqa: F401  (error typing and tips are part of this module's interface)
    CORRECT,
    ERROR_TIPS,
    HALLUCINATED,
    feedback_prompt,
    first_answer,
    reflect,
    type_errors,
)
from kd_bundle.knowledge.reflection import jaccard as _jaccard
from kd_bundle.teacher import TeacherClient

log = logging.getLogger("kd_bundle.teacher")

RULES_PROMPT_VERSION = f"{PROMPT_VERSION}/rules-v3"
CONVERSATION = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
SESSION_RULE_COLUMNS: dict[str, pl.DataType] = {
    "domain": pl.String,
    "session_id": pl.Int64,
    "rules": pl.List(pl.String),  # the rule lines split from the summary
    "summary": pl.String,  # the teacher's raw answer to the rules question
    "conversation": CONVERSATION,  # every turn, raw answers included
    "steps": pl.List(pl.String),  # label of each user turn: detect, intents, adjust, ..., explain, rules
    "first_bundles": pl.List(pl.List(pl.Int64)),  # the teacher's first answer (null when unreadable)
    "first_error_codes": pl.List(pl.Int64),  # AICL's codes of the first answer ([5] when unreadable)
    "first_precision": pl.Float64,  # strict precision of the first answer: how hard the session is for the teacher
    "self_corrected": pl.Boolean,  # the self-correction's adjust turn changed the bundles
    "feedback_rounds": pl.Int64,
    "final_bundles": pl.List(pl.List(pl.Int64)),  # 1-based product numbers of the last readable answer
    "final_error_codes": pl.List(pl.Int64),
    "parse_failures": pl.Int64,  # answers in the conversation that could not be read as bundles
    "truncated": pl.Int64,  # answers cut at max_tokens (never read as bundles or rules)
    "request_keys": pl.List(pl.String),  # request-cache key of every teacher answer, in order: the extraction cost
    "error": pl.String,  # null when the session produced rules
    "knowledge": pl.String,  # the rules as "- rule" lines, the prompt block retrieval hands on (null on failure)
}
RULE_COLUMNS: dict[str, pl.DataType] = {
    "domain": pl.String,
    "rule": pl.String,
    "support": pl.Int64,  # number of sessions that stated this rule (or a near duplicate)
    "session_ids": pl.List(pl.Int64),
    "variants": pl.List(pl.String),  # the other wordings merged into it
    "knowledge": pl.String,  # = rule: a domain-level knowledge line for retrieval (kd_bundle.student.retrieval)
}

_MARKER = re.compile(r"^\s*(?:[-•#>]+|\(?\d+[.):]|rule\s*\d*\s*[:.])\s*", re.I)


class RuleConfig(BaseModel, frozen=True, extra="forbid"):
    """Self-reflection settings; the prompt version is part of every task cache key."""

    self_correction: bool = Field(True, description="AICL's 3 turns: intents, adjusted bundles, regenerated intents.")
    feedback_rounds: int = Field(
        4, ge=0, le=8, description="Auto-feedback turns per session at most (0 = off); a published AICL config used 4."
    )
    explain_errors: bool = Field(
        True, description="Show the true bundles and ask for the causes of the errors before the rule summary."
    )
    missing_tip: bool = Field(True, description="Also tell the teacher how many true bundles it has not found yet.")
    max_rules_per_session: int = Field(10, ge=1, description="Rule lines kept from one summary.")
    min_rule_words: int = Field(4, ge=1, description="Shorter lines are headings or noise, not rules.")
    dedup_threshold: float = Field(0.7, gt=0, le=1, description="Word-set Jaccard at which two rules are one.")
    prompt_version: str = Field(RULES_PROMPT_VERSION, description="Bump when a prompt changes.")


def distill_rules(
    sessions: pl.DataFrame, domain: str, cfg: RuleConfig, client: TeacherClient
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-session rules in SESSION_RULE_COLUMNS, consolidated rules in RULE_COLUMNS) from the training rows."""
    train = training_sessions(sessions, "distill_rules")
    rows = client.map(lambda session: _reflect(session, domain, cfg, client), train.to_dicts(), label=f"rules {domain}")
    session_rules = pl.DataFrame(rows, schema=SESSION_RULE_COLUMNS)
    failed = session_rules.filter(pl.col("error").is_not_null()).height
    log.info("rules %s: %d sessions, %d without rules", domain, session_rules.height, failed)
    return session_rules, consolidate_rules(session_rules, cfg)


def first_answer_difficulty(sessions: pl.DataFrame, domain: str, client: TeacherClient) -> pl.DataFrame:
    """Difficulty sampling's preliminary inference over a whole pool when the teacher distils only part of it: the
    teacher's first answer on every training session (one request each, the rule loop's first; distilled sessions
    are answered from the request cache), scored as in `teacher_difficulty` (pools.DIFFICULTY columns)."""
    train = training_sessions(sessions, "first_answer_difficulty")
    scored = client.map(lambda session: first_answer(session, client), train.to_dicts(), label=f"first answers {domain}")
    return pl.DataFrame({"session_id": train["session_id"], "score": [score for score, _ in scored],
                         "error_codes": [codes for _, codes in scored]},
                        schema={"session_id": pl.Int64, "score": pl.Float64, "error_codes": pl.List(pl.Int64)})


def split_rules(summary: str, cfg: RuleConfig) -> list[str]:
    """Rule lines from a free-text summary: list items, else sentences; numbering and markup removed."""
    lines = [line for line in (summary or "").splitlines() if line.strip()]
    if len(lines) <= 1:
        lines = re.split(r"(?<=[.!?])\s+", (summary or "").strip())
    rules = []
    for line in lines:
        text = re.sub(r"[*_`]+", "", line).strip()
        while (stripped := _MARKER.sub("", text, count=1)) != text:  # "- 2. Rule 3:" -> ""
            text = stripped
        if len(re.findall(r"[A-Za-z]{2,}", text)) >= cfg.min_rule_words and not text.endswith("?") and text not in rules:
            rules.append(text)
    return rules[: cfg.max_rules_per_session]


def consolidate_rules(session_rules: pl.DataFrame, cfg: RuleConfig) -> pl.DataFrame:
    """One row per distinct rule of a domain: near-duplicates (word-set Jaccard >= threshold) are merged into the
    first wording seen, and support counts the sessions behind it. Sorted by support, then first appearance."""
    groups: list[dict[str, Any]] = []
    for row in session_rules.filter(pl.col("error").is_null()).iter_rows(named=True):
        for rule in row["rules"]:
            words = _words(rule)
            group = next((g for g in groups if g["domain"] == row["domain"]
                          and _jaccard(words, g["words"]) >= cfg.dedup_threshold), None)
            if group is None:
                groups.append({"domain": row["domain"], "rule": rule, "words": words, "session_ids": [row["session_id"]],
                               "variants": []})
                continue
            if row["session_id"] not in group["session_ids"]:
                group["session_ids"].append(row["session_id"])
            if rule != group["rule"] and rule not in group["variants"]:
                group["variants"].append(rule)
    rows = [{"domain": g["domain"], "rule": g["rule"], "support": len(g["session_ids"]), "session_ids": g["session_ids"],
             "variants": g["variants"], "knowledge": g["rule"]} for g in groups]
    frame = pl.DataFrame(rows, schema=RULE_COLUMNS)
    return frame.with_row_index("order").sort(["support", "order"], descending=[True, False]).drop("order")


def _reflect(session: dict[str, Any], domain: str, cfg: RuleConfig, client: TeacherClient) -> dict[str, Any]:
    done = reflect(session, cfg, client)
    conversation = done.conversation
    conversation.append({"role": "user", "content": RULES_QUESTION})
    answered = client.complete_or_cut(list(conversation))
    summary, cut = answered.text, int(answered.truncated)  # a cut summary is kept raw; no rule is read from it
    conversation.append({"role": "assistant", "content": summary})
    prompts = [turn["content"] for turn in conversation if turn["role"] == "user"]
    rules = [] if cut else [rule for rule in split_rules(summary, cfg) if not any(rule in prompt for prompt in prompts)]
    error = ("summary cut at max_tokens" if cut
             else None if rules else f"no rule of {cfg.min_rule_words}+ words in the summary")
    if error or done.parse_failures:
        client.note_failure(int(error is not None) + done.parse_failures)
    truth = bundle_positions(session["bundles"], session["item_ids"])
    return {
        "domain": domain,
        "session_id": session["session_id"],
        "rules": rules,
        "summary": summary,
        "conversation": conversation,
        "steps": done.steps + ["rules"],
        "first_bundles": done.first.bundles,
        "first_error_codes": done.first_codes,
        "first_precision": done.first_precision,
        "self_corrected": done.self_corrected,
        "feedback_rounds": done.feedback_rounds,
        "final_bundles": done.readable.bundles,
        "final_error_codes": type_errors(done.readable, truth) if done.readable.bundles is not None else [HALLUCINATED],
        "parse_failures": done.parse_failures,
        "truncated": done.truncated + cut,
        "request_keys": done.request_keys + [answered.request_key],
        "error": error,
        "knowledge": "\n".join(f"- {rule}" for rule in rules) if rules else None,
    }


def training_sessions(sessions: pl.DataFrame, caller: str) -> pl.DataFrame:
    missing = [c for c in ("session_id", "split", "item_ids", "titles", "bundles", "intents") if c not in sessions.columns]
    if missing:
        raise ValueError(f"{caller}: missing columns {missing}")
    train = sessions.filter(pl.col("split") == "train")
    if train.height < sessions.height:
        log.info("%s: using the %d training sessions of %d given", caller, train.height, sessions.height)
    return train


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))
