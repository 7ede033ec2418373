"""Knowledge format 2, rules: the teacher's self-reflection on training sessions (notes/paper.md sections 4-5).

For each training session the teacher detects bundles (AICL's prompt); its answer is compared with the ground
truth by AICL's Jaccard-based error typing, the typed tips go back as feedback turns until the bundles are right
or the rounds are spent, and the teacher finally says which rules it found. The rules of every session are kept
with the conversation that produced them (SESSION_RULE_COLUMNS), and a consolidated, de-duplicated rule set per
domain counts how many sessions support each rule (RULE_COLUMNS).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.parsing import ParsedBundles, parse_bundles
from kd_bundle.prompts import DETECT_INSTRUCTION, PROMPT_VERSION, RULES_QUESTION, bundle_positions, format_session
from kd_bundle.teacher import TeacherClient

log = logging.getLogger("kd_bundle.teacher")

RULES_PROMPT_VERSION = f"{PROMPT_VERSION}/rules-v1"
CONVERSATION = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
SESSION_RULE_COLUMNS: dict[str, pl.DataType] = {
    "domain": pl.String,
    "session_id": pl.Int64,
    "rules": pl.List(pl.String),  # the rule lines split from the summary
    "summary": pl.String,  # the teacher's raw answer to the rules question
    "conversation": CONVERSATION,  # every turn, raw answers included
    "feedback_rounds": pl.Int64,
    "final_bundles": pl.List(pl.List(pl.Int64)),  # 1-based product numbers of the last readable answer
    "final_error_codes": pl.List(pl.Int64),
    "parse_failures": pl.Int64,  # answers in the conversation that could not be read as bundles
    "error": pl.String,  # null when the session produced rules
    "knowledge": pl.String,  # the rules as "- rule" lines, the prompt block retrieval hands on (null on failure)
}
RULE_COLUMNS: dict[str, pl.DataType] = {
    "domain": pl.String,
    "rule": pl.String,
    "support": pl.Int64,  # number of sessions that stated this rule (or a near duplicate)
    "session_ids": pl.List(pl.Int64),
    "variants": pl.List(pl.String),  # the other wordings merged into it
    "knowledge": pl.String,  # = rule: a domain-level knowledge line for retrieval (kd_bundle.retrieval)
}

# AICL's findErrors codes -> the tip the teacher reads (notes/paper.md section 4).
ERROR_TIPS = {
    0: "correct and should be remained",
    1: "invalid and should be removed",
    2: "containing some irrelevant products that should be removed",
    3: "missing some products and should append other related products from the sequence",
    4: "containing only one product and should contain at least 2 related products",
}
UNREADABLE_TIP = (
    "Your answer could not be read as bundles of the listed products (only product1 to product{n} exist). "
    "Please output the bundles with the format: {{'bundle number':['product number']}}."
)
FEEDBACK_TEMPLATE = (
    "Here are some tips for the detected bundles in your answer: {tips}. Adjust the bundles based on the tips in "
    "your answer. Please output the adjusted bundles with the format: {{'bundle number':'product number'}}."
)
CORRECT, HALLUCINATED = 0, 5
_MARKER = re.compile(r"^\s*(?:[-•#>]+|\(?\d+[.):]|rule\s*\d*\s*[:.])\s*", re.I)


class RuleConfig(BaseModel, frozen=True):
    """Self-reflection settings; the prompt version is part of every task cache key."""

    feedback_rounds: int = Field(2, ge=0, le=8, description="Feedback turns per session; a third-party AICL run used 4.")
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


def type_errors(parsed: ParsedBundles, truth: list[list[int]]) -> list[int]:
    """AICL's error code per generated bundle against the ground truth (1-based product numbers).

    The reference bundle is the ground-truth bundle of maximum Jaccard. 0: identical; 1: disjoint; 2: not a subset
    (irrelevant products); 3: strict subset of 2+ products (missing products); 4: one product. An unreadable
    answer or a hallucinated product number (the parser rejects those) is [5].
    """
    if parsed.bundles is None:
        return [HALLUCINATED]
    codes = []
    for bundle in parsed.bundles:
        generated = set(bundle)
        best = max(truth, key=lambda t: _jaccard(generated, set(t)), default=[])
        jaccard = _jaccard(generated, set(best))
        if jaccard == 1:
            codes.append(0)
        elif jaccard == 0:
            codes.append(1)
        elif not generated <= set(best):
            codes.append(2)
        else:
            codes.append(3 if len(generated) >= 2 else 4)
    return codes


def feedback_prompt(codes: list[int], n_items: int, missing: int = 0) -> str:
    """The feedback turn for `codes` (one per generated bundle, or [5] for an unreadable answer)."""
    if codes == [HALLUCINATED] or not codes:
        return UNREADABLE_TIP.format(n=n_items)
    tips = []
    for code, tip in ERROR_TIPS.items():
        names = [f"bundle{i}" for i, c in enumerate(codes, start=1) if c == code]
        if names:
            verb = "is" if len(names) == 1 else "are"
            tips.append(f"{' and '.join(names)} {verb} {tip}")
    if missing > 0:
        tips.append(f"{missing} bundle(s) in the sequence {'is' if missing == 1 else 'are'} not detected yet")
    return FEEDBACK_TEMPLATE.format(tips="; ".join(tips))


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
    n_items = len(session["item_ids"])
    truth = bundle_positions(session["bundles"], session["item_ids"])
    prompt = DETECT_INSTRUCTION.replace("{session}", format_session(session["titles"]))
    conversation = [{"role": "user", "content": prompt}]
    answer = _ask(client, conversation)
    parsed = parse_bundles(answer, n_items)
    failures, readable, rounds = int(parsed.bundles is None), parsed, 0
    codes = type_errors(parsed, truth)
    for _ in range(cfg.feedback_rounds):
        missing = _missing(readable, truth) if cfg.missing_tip and parsed.bundles is not None else 0
        if parsed.bundles and all(c == CORRECT for c in codes) and missing == 0:
            break
        conversation.append({"role": "user", "content": feedback_prompt(codes, n_items, missing)})
        answer = _ask(client, conversation)
        rounds += 1
        parsed = parse_bundles(answer, n_items)
        failures += parsed.bundles is None
        readable = parsed if parsed.bundles is not None else readable
        codes = type_errors(parsed, truth)
    conversation.append({"role": "user", "content": RULES_QUESTION})
    summary = _ask(client, conversation)
    prompts = [turn["content"] for turn in conversation if turn["role"] == "user"]
    rules = [rule for rule in split_rules(summary, cfg) if not any(rule in prompt for prompt in prompts)]  # no echoes
    error = None if rules else f"no rule of {cfg.min_rule_words}+ words in the summary"
    if error or failures:
        client.note_failure(int(error is not None) + failures)
    return {
        "domain": domain,
        "session_id": session["session_id"],
        "rules": rules,
        "summary": summary,
        "conversation": conversation,
        "feedback_rounds": rounds,
        "final_bundles": readable.bundles,
        "final_error_codes": type_errors(readable, truth) if readable.bundles is not None else [HALLUCINATED],
        "parse_failures": failures,
        "error": error,
        "knowledge": "\n".join(f"- {rule}" for rule in rules) if rules else None,
    }


def _ask(client: TeacherClient, conversation: list[dict[str, str]]) -> str:
    answer = client.complete(list(conversation)).text
    conversation.append({"role": "assistant", "content": answer})
    return answer


def _missing(parsed: ParsedBundles, truth: list[list[int]]) -> int:
    """Ground-truth bundles that no generated bundle matches exactly."""
    found = {frozenset(b) for b in parsed.bundles or []}
    return sum(frozenset(t) not in found for t in truth)


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


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0
