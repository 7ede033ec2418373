"""Batched student inference: prompts with retrieved knowledge in, a predictions frame (PREDICTION_COLUMNS) out.

Prompts are sorted by length and generated `batch_size` at a time with left padding (so every row's answer starts
at the same column), greedy by default; the prefix all prompts share is prefilled once (kd_bundle.student.prefix).
With `decoding="grammar"` (the default) every row is held to its session's answer grammar (kd_bundle.student.grammar)
and stops when the grammar is complete; with "free" a row stops at end of turn, once its answer dict closes, or after
`max_new_tokens`. Answers go through the shared parser; what cannot be parsed
keeps its raw text and null bundles, and the metrics count it as failed. Each row also records its cost:
`prompt_tokens`, `new_tokens` and `seconds` (its equal share of its batch's wall time: rows of a batch run in lockstep).

A student trained with reasoning (its adapter's sft_config.json says so) writes one free `Reasoning:` line of at
most `reasoning_tokens` tokens before the answer; the grammar then owns the answer, so the prompt's prefill is
dropped unless it is the start of that reasoning.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from kd_bundle.data.parsing import parse_bundles
from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS, bundles_from_positions, predictions_frame
from kd_bundle.student.icl import ANSWER_MARKER, REASONING_MARKER, ICLConfig, answer_part, build_prompts
from kd_bundle.student.model import StudentConfig, context_window, load_student
from kd_bundle.student.prefix import PromptBatches, quiet_cache_argument

log = logging.getLogger(__name__)


class Generated(NamedTuple):
    text: str  # the new text only (the prefill is in the prompt)
    prompt_tokens: int
    new_tokens: int
    seconds: float  # this row's share of its batch's wall time


def predict_sessions(
    sessions: pl.DataFrame,
    retrieved: pl.DataFrame | None,
    student: StudentConfig,
    icl: ICLConfig,
    adapter: Path | None = None,
    split: str = "test",
) -> pl.DataFrame:
    """ICL (no adapter), SFT (adapter, icl.formats=()) or SFT+ICL (both) over one split. Columns: PREDICTION_COLUMNS."""
    targets = sessions.filter(pl.col("split") == split)
    if targets.height == 0:
        raise ValueError(f"predict_sessions: no {split!r} sessions to predict")
    reasoning = adapter_reasons(adapter)
    if reasoning and not REASONING_MARKER.startswith(icl.prefill.strip()):
        log.info("predict_sessions: the adapter reasons first; prefill %r dropped", icl.prefill)
        icl = icl.model_copy(update={"prefill": ""})
    model, tokenizer = load_student(student, adapter)
    prompts = build_prompts(targets, retrieved, tokenizer, icl, prompt_budget(model, student, reasoning))
    return predict_bundles(targets, prompts, model, tokenizer, student, reasoning)


def predict_bundles(
    sessions: pl.DataFrame,
    prompts: pl.DataFrame,
    model: Any,
    tokenizer: Any,
    cfg: StudentConfig,
    reasoning: bool = False,
) -> pl.DataFrame:
    """Generate for every prompt, parse the answers, map product numbers to item ids. Columns: PREDICTION_COLUMNS."""
    joined = prompts.select("session_id", "prompt", "prefill").join(
        sessions.select("session_id", "item_ids"), on="session_id", how="inner"
    )
    prefills = joined["prefill"].to_list()
    n_items = joined["item_ids"].list.len().to_list()
    started = time.perf_counter()
    answers = generate_answers(model, tokenizer, joined["prompt"].to_list(), cfg, prefills, n_items, reasoning)
    log.info("generated %d answers in %.1f s (%s decoding)", len(answers), time.perf_counter() - started, cfg.decoding)
    rows = [
        _prediction(sid, items, prefill + answer.text, answer)  # the prefill is the start of the answer
        for (sid, items), prefill, answer in zip(joined.select("session_id", "item_ids").iter_rows(), prefills, answers)
    ]
    failed = sum(row["bundles"] is None for row in rows)
    if failed:
        log.warning("predict_bundles: %d of %d answers did not parse", failed, len(rows))
    return predictions_frame(rows).select(list(PREDICTION_COLUMNS)).sort("session_id")


def generate_texts(
    model: Any, tokenizer: Any, prompts: list[str], cfg: StudentConfig, prefills: list[str] | None = None,
    n_items: list[int] | None = None,
) -> list[str]:
    """The new text for each prompt, in input order (see `generate_answers`)."""
    return [answer.text for answer in generate_answers(model, tokenizer, prompts, cfg, prefills, n_items)]


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    cfg: StudentConfig,
    prefills: list[str] | None = None,
    n_items: list[int] | None = None,
    reasoning: bool = False,
) -> list[Generated]:
    """The new text and cost of each prompt, in input order. Batches hold prompts of similar length (little
    padding). `prefills` are the answer text already at the end of each prompt; `n_items` the session lengths the
    grammar needs (decoding="grammar")."""
    import torch
    from transformers import GenerationConfig

    prefills = prefills or [""] * len(prompts)
    if cfg.decoding == "grammar" and (n_items is None or len(n_items) != len(prompts)):
        raise ValueError("generate_answers: grammar decoding needs the number of products of every prompt (n_items)")
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    lengths = [len(row) for row in ids]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    stop_ids = _stop_ids(model, tokenizer)
    generation = GenerationConfig(
        max_new_tokens=new_token_budget(cfg, reasoning),
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
    )
    book = None
    if cfg.decoding == "grammar":
        from kd_bundle.student.grammar import grammar_book

        book = grammar_book(tokenizer, int(model.get_output_embeddings().weight.shape[0]))
    inputs = PromptBatches(model, ids, tokenizer.pad_token_id, next(model.parameters()).device)
    shared_seconds = inputs.prefill_seconds / max(len(prompts), 1)  # every row's share of the shared prefill
    answers: dict[int, Generated] = {}
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        batch_started = time.perf_counter()
        encoded = inputs.inputs(batch)
        width = encoded["input_ids"].shape[1]
        rows = None
        if book is not None:
            grammars = [book.grammar(n_items[i], cfg.max_bundles, cfg.intents, reasoning) for i in batch]
            rows = book.constraint(grammars, [prefills[i] for i in batch], cfg.reasoning_tokens if reasoning else None,
                                   generation.max_new_tokens, cfg.intents)
            mask, stop = rows.processors()
            extra = {"logits_processor": [mask], "stopping_criteria": [stop]}
        else:
            extra = {"stopping_criteria": [_AnswerClosed(tokenizer, width, [prefills[i] for i in batch])]}
        with torch.inference_mode(), quiet_cache_argument():
            output = model.generate(**encoded, generation_config=generation, **extra)
        new = output[:, width:].tolist()
        share = (time.perf_counter() - batch_started) / len(batch) + shared_seconds
        for row, i in enumerate(batch):
            count = (rows.new_tokens[row] if rows is not None
                     else _decoded_length(new[row], stop_ids, tokenizer.pad_token_id))
            text = tokenizer.decode(new[row][:count], skip_special_tokens=True)
            answers[i] = Generated(text, lengths[i], count, share)
    return [answers[i] for i in range(len(prompts))]


def new_token_budget(cfg: StudentConfig, reasoning: bool) -> int:
    """Tokens a row may generate: the answer's cap, plus the reasoning cap for a reasoning student."""
    return cfg.max_new_tokens + (cfg.reasoning_tokens if reasoning else 0)


def prompt_budget(model: Any, cfg: StudentConfig, reasoning: bool) -> int:
    """Prompt tokens a row may take: the context window less what it may generate (every prompt builder's limit)."""
    window, budget = context_window(model, cfg), new_token_budget(cfg, reasoning)
    if window <= budget:
        raise ValueError(f"the student's context window {window} is not above its new-token budget {budget} "
                         f"(max_new_tokens{' + reasoning_tokens' if reasoning else ''})")
    return window - budget


def adapter_reasons(adapter: Path | None) -> bool:
    """Whether the adapter was trained to reason before answering (SFTConfig.reasoning, saved beside it)."""
    if adapter is None or not (Path(adapter) / "sft_config.json").exists():
        return False
    return bool(json.loads((Path(adapter) / "sft_config.json").read_text()).get("reasoning", False))


class _AnswerClosed:
    """Free decoding: stops a row once its answer dict is closed (small students ramble on after it, paying decode
    steps). A row's text is decoded only on a step whose new token holds a closing bracket, not every step."""

    def __init__(self, tokenizer: Any, prompt_width: int, prefills: list[str]):
        self.tokenizer, self.prompt_width, self.prefills = tokenizer, prompt_width, prefills
        self.closed = [answer_closed(prefill) for prefill in prefills]  # a complete prefill: stop at the first step

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        newest = self.tokenizer.convert_ids_to_tokens(input_ids[:, -1].tolist())
        for row, token in enumerate(newest):
            if not self.closed[row] and token and ("}" in token or "]" in token):
                text = self.tokenizer.decode(input_ids[row, self.prompt_width :], skip_special_tokens=True)
                self.closed[row] = answer_closed(self.prefills[row] + text)
        return torch.tensor(self.closed, dtype=torch.bool, device=input_ids.device)


def answer_closed(text: str) -> bool:
    """True once the text after the answer marker (or a text that opens with a bracket) holds a balanced {...}/[...]."""
    if ANSWER_MARKER in text:
        tail = answer_part(text)
    elif text.lstrip()[:1] in ("{", "["):
        tail = text
    else:
        return False
    depth, quote = 0, None
    for char in tail:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"" and depth:
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]" and depth:
            depth -= 1
            if depth == 0:
                return True
    return False


def _prediction(session_id: int, item_ids: list[str], text: str, cost: Generated | None = None) -> dict[str, Any]:
    parsed = parse_bundles(answer_part(text), len(item_ids))
    bundles = bundles_from_positions(parsed.bundles, item_ids) if parsed.bundles is not None else None
    row = {"session_id": session_id, "bundles": bundles, "intents": parsed.intents, "raw": text}
    if cost is not None:
        row.update(prompt_tokens=cost.prompt_tokens, new_tokens=cost.new_tokens, seconds=cost.seconds)
    return row


def _decoded_length(ids: list[int], stop_ids: list[int], pad_id: int | None) -> int:
    """Tokens a free row decoded: up to its first end-of-turn token (included) or padding (not included)."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return position + 1
        if token == pad_id:
            return position
    return len(ids)


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids of both the tokenizer and the model's generation config (chat models stop on either)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)
