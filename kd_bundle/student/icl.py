"""Prompts that carry retrieved knowledge: ICL prompts for inference and the SFT examples built from the same blocks.

A prompt is one user turn in the model's own chat template: AICL's bundle definition, the knowledge sections (one
per format, in the order the config names them), then AICL's "detect bundles for the below product sequence".
Per-session knowledge (raw examples, neighbours' rules, thoughts) counts as demonstrations; domain-level lines
(patterns, consolidated rules) as lines. A prompt that does not fit the context window loses its farthest
demonstrations first, then lines; one that cannot fit even bare raises PromptTooLong. Nothing is truncated silently:
the kept counts are columns of the prompts frame and cuts are logged.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.data.prompts import (
    BUNDLE_DEFINITION,
    DETECT_INSTRUCTION,
    DETECT_WITH_KNOWLEDGE,
    bundle_positions,
    format_bundles,
    format_session,
    one_line,
)

log = logging.getLogger(__name__)

PROMPT_COLUMNS = ["session_id", "prompt", "prefill", "prompt_tokens", "demonstrations", "lines"]
EXAMPLE_COLUMNS = ["session_id", "prompt", "completion"]
ANSWER_MARKER = "Bundles:"
REASONING_MARKER = "Reasoning:"
_HEADINGS = {
    "raw": "Examples from similar sessions",
    "patterns": "Frequent category patterns",
    "rules": "Rules for detecting bundles",
    "thoughts": "Worked examples with reasoning",
}


class PromptTooLong(ValueError):
    """The session alone, without any knowledge, does not fit the context window left for the prompt."""


class FittedPrompt(NamedTuple):
    user: str  # the user turn
    prompt: str  # the user turn in the chat template, ready for generation
    tokens: int
    demonstrations: int  # per-session blocks kept per format
    lines: int  # domain-level lines kept


class ICLConfig(BaseModel, frozen=True, extra="forbid"):
    """Which retrieved knowledge goes into the inference prompt (independent of the knowledge used in training)."""

    formats: tuple[str, ...] = Field(
        ("raw",), description="Formats of the retrieved frame, in prompt order; () = zero-shot AICL prompt."
    )
    demonstrations: int = Field(3, ge=0, le=100, description="Nearest per-session blocks kept per format, at most.")
    max_lines: int = Field(20, ge=0, description="Domain-level lines (patterns, consolidated rules) kept, at most.")
    prefill: str = Field(
        "", description="Start of the assistant turn, e.g. \"Bundles: {'bundle1': ['product\": keeps a small base "
        "model in the answer format; it is part of the raw answer. '' = none (the SFT student needs none)."
    )


def build_prompts(
    sessions: pl.DataFrame, retrieved: pl.DataFrame | None, tokenizer: Any, cfg: ICLConfig, max_prompt_tokens: int
) -> pl.DataFrame:
    """One chat-templated prompt per session that fits `max_prompt_tokens`. Columns: PROMPT_COLUMNS."""
    _require(sessions, ["session_id", "titles"], "build_prompts")
    knowledge = knowledge_sections(retrieved, cfg.formats)
    prefill_tokens = _count(tokenizer, cfg.prefill) if cfg.prefill else 0
    budget = max_prompt_tokens - prefill_tokens
    rows = []
    for sid, titles in sessions.select("session_id", "titles").iter_rows():
        sections = knowledge.get(sid, [])
        fitted = fit_prompt(titles, sections, tokenizer, cfg.demonstrations, cfg.max_lines, budget)
        rows.append((sid, fitted.prompt + cfg.prefill, cfg.prefill, fitted.tokens + prefill_tokens,
                     fitted.demonstrations, fitted.lines))
    frame = pl.DataFrame(rows, schema=PROMPT_COLUMNS, orient="row")
    cut = frame.filter(pl.col("demonstrations") < pl.Series(_offered(knowledge, frame["session_id"], cfg.demonstrations)))
    if cut.height:
        log.warning("build_prompts: %d of %d prompts dropped demonstrations to fit %d tokens",
                    cut.height, frame.height, max_prompt_tokens)
    return frame


def build_sft_examples(
    sessions: pl.DataFrame,
    retrieved: pl.DataFrame | None,
    thoughts: pl.DataFrame | None,
    tokenizer: Any,
    cfg: ICLConfig,
    max_length: int,
    max_bundles: int | None = None,
    reasoning_tokens: int | None = None,
    split: str = "train",
) -> pl.DataFrame:
    """Training pairs for the train split (or `split`: validation examples are built the same way): knowledge of `cfg.formats` in the prompt, the true bundles as the answer
    in canonical form, preceded by the session's own thought (on one line) when `thoughts` is given (sessions without
    a thought are skipped). Every answer is one the student's grammar lets it write: with `max_bundles` (the
    grammar's cap) an answer keeps its first `max_bundles` bundles, and with `reasoning_tokens` a thought longer than
    the student's reasoning cap is left out; both are counted in the log. Columns: EXAMPLE_COLUMNS; `completion`
    ends with the template's end-of-turn text so the model learns to stop."""
    train = sessions.filter(pl.col("split") == split)
    reasoning = _thought_texts(thoughts) if thoughts is not None else None
    if reasoning is not None:
        train = train.filter(pl.col("session_id").is_in(list(reasoning)))
    knowledge = knowledge_sections(retrieved, cfg.formats)
    rows, capped, too_long = [], 0, 0
    for row in train.iter_rows(named=True):
        positions = bundle_positions(row["bundles"], row["item_ids"])
        if max_bundles is not None and len(positions) > max_bundles:
            positions, capped = positions[:max_bundles], capped + 1
        thought = (reasoning or {}).get(row["session_id"])
        if thought is not None and reasoning_tokens is not None:
            if _count(tokenizer, f"{REASONING_MARKER} {one_line(thought)}") > reasoning_tokens:
                too_long += 1
                continue
        answer = answer_text(positions, thought)
        budget = max_length - _count(tokenizer, answer) - 8  # 8: end-of-turn tokens of any template
        sections = knowledge.get(row["session_id"], [])
        fitted = fit_prompt(row["titles"], sections, tokenizer, cfg.demonstrations, cfg.max_lines, budget)
        rows.append((row["session_id"], fitted.prompt, _completion(tokenizer, fitted, answer)))
    if capped:
        log.warning("build_sft_examples: %d of %d answers have more than %d bundles (the grammar's cap, "
                    "StudentConfig.max_bundles); they keep their first %d", capped, train.height, max_bundles,
                    max_bundles)
    if too_long:
        log.warning("build_sft_examples: %d of %d thoughts are longer than the student's reasoning cap of %d tokens "
                    "(StudentConfig.reasoning_tokens) and are left out", too_long, train.height, reasoning_tokens)
    return pl.DataFrame(rows, schema=EXAMPLE_COLUMNS, orient="row")


def fit_prompt(
    titles: list[str],
    sections: list[tuple[str, bool, list[str]]],
    tokenizer: Any,
    demonstrations: int,
    max_lines: int,
    max_prompt_tokens: int,
) -> FittedPrompt:
    """The most knowledge that fits `max_prompt_tokens`: farthest demonstrations cut first, then lines."""
    n_demos = max((len(b) for _, per_session, b in sections if per_session), default=0)
    n_demos = min(n_demos, demonstrations)
    n_lines = min(max((len(b) for _, per_session, b in sections if not per_session), default=0), max_lines)
    while True:
        user = user_message(titles, sections, n_demos, n_lines)
        prompt = chat_prompt(tokenizer, user)
        tokens = _count(tokenizer, prompt)
        if tokens <= max_prompt_tokens:
            return FittedPrompt(user, prompt, tokens, n_demos, n_lines)
        if n_demos > 0:
            n_demos -= 1
        elif n_lines > 0:
            n_lines //= 2
        else:
            raise PromptTooLong(
                f"a session of {len(titles)} products needs {tokens} prompt tokens without any knowledge; "
                f"only {max_prompt_tokens} are left (raise StudentConfig.max_context or lower max_new_tokens)"
            )


def user_message(titles: list[str], sections: list[tuple[str, bool, list[str]]], n_demos: int, n_lines: int) -> str:
    """The user turn: bundle definition, knowledge sections, AICL's detection request (zero-shot without knowledge)."""
    session = format_session(titles)
    parts = []
    for name, per_session, blocks in sections:
        kept = blocks[:n_demos] if per_session else blocks[:n_lines]
        if not kept:
            continue
        body = "\n\n".join(f"{i}. {b}" for i, b in enumerate(kept, 1)) if per_session else "\n".join(f"- {b}" for b in kept)
        parts.append(f"### {_heading(name)}\n{body}")
    if not parts:
        return DETECT_INSTRUCTION.replace("{session}", session)
    intro = f"{BUNDLE_DEFINITION} Each bundle must contain multiple products. Here is knowledge that can help:"
    request = DETECT_WITH_KNOWLEDGE.replace("{session}", session)
    return "\n\n".join([intro, *parts, f"{request} Answer as '{ANSWER_MARKER} {{...}}'."])


def answer_text(positions: list[list[int]], reasoning: str | None = None) -> str:
    """The assistant turn the student learns: optional reasoning, then the bundles after ANSWER_MARKER."""
    answer = f"{ANSWER_MARKER} {format_bundles(positions)}"
    return f"{REASONING_MARKER} {one_line(reasoning)}\n{answer}" if reasoning and one_line(reasoning) else answer


def answer_part(text: str) -> str:
    """What follows the last ANSWER_MARKER (the reasoning before it may quote products), else the whole text."""
    head, marker, tail = text.rpartition(ANSWER_MARKER)
    return tail if marker else text


def chat_prompt(tokenizer: Any, user: str) -> str:
    return tokenizer.apply_chat_template(_messages(user), tokenize=False, add_generation_prompt=True)


def knowledge_sections(
    retrieved: pl.DataFrame | None, formats: tuple[str, ...]
) -> dict[int, list[tuple[str, bool, list[str]]]]:
    """session_id -> [(format, per_session, blocks)] in `formats` order, the input of `fit_prompt` and
    `user_message`; a format absent from `retrieved` is an error."""
    if not formats:
        return {}
    if retrieved is None:
        raise ValueError(f"knowledge format(s) {list(formats)} asked for, but no retrieved knowledge was given")
    present = set(retrieved["format"].unique().to_list()) if retrieved.height else set()
    missing = [f for f in formats if f not in present]
    if missing:
        raise ValueError(f"knowledge format(s) {missing} not retrieved; the retrieved frame has {sorted(present)}")
    rank = {name: i for i, name in enumerate(formats)}
    by_session: dict[int, list[tuple[str, bool, list[str]]]] = {}
    chosen = retrieved.filter(pl.col("format").is_in(list(formats)))
    for sid, name, neighbours, blocks in chosen.select("session_id", "format", "neighbour_ids", "knowledge").iter_rows():
        by_session.setdefault(sid, []).append((name, len(neighbours or []) > 0, list(blocks or [])))
    for sections in by_session.values():
        sections.sort(key=lambda section: rank[section[0]])
    return by_session


# ---------------------------------------------------------------------------------------------- private


def _messages(user: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}]


def _completion(tokenizer: Any, fitted: FittedPrompt, answer: str) -> str:
    """The assistant turn as the template renders it after the prompt (answer + end-of-turn text)."""
    turns = _messages(fitted.user) + [{"role": "assistant", "content": answer}]
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    if full.startswith(fitted.prompt):
        return full[len(fitted.prompt) :]
    return answer + (tokenizer.eos_token or "")  # templates that rewrite earlier turns: answer + EOS


def _offered(knowledge: dict, session_ids: pl.Series, demonstrations: int) -> list[int]:
    return [
        min(demonstrations, max((len(b) for _, ps, b in knowledge.get(sid, []) if ps), default=0))
        for sid in session_ids.to_list()
    ]


def _thought_texts(thoughts: pl.DataFrame) -> dict[int, str]:
    column = next((c for c in ("thought", "thoughts", "knowledge") if c in thoughts.columns), None)
    if column is None or "session_id" not in thoughts.columns:
        raise ValueError(f"build_sft_examples: thoughts need session_id and thought columns; found {thoughts.columns}")
    pairs = thoughts.select("session_id", column).drop_nulls().unique("session_id", keep="first").iter_rows()
    return {sid: text for sid, text in pairs if text.strip()}


def _heading(name: str) -> str:
    base, _, domain = name.partition("@")
    heading = _HEADINGS.get(base, f"Knowledge ({base})")
    return f"{heading} (from the {domain} domain)" if domain else heading


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _require(frame: pl.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; found {frame.columns}")
