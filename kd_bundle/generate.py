"""Batched student inference: prompts with retrieved knowledge in, a predictions frame (PREDICTION_COLUMNS) out.

Prompts are sorted by length and generated `batch_size` at a time with left padding (so every row's answer starts
at the same column), greedy by default, at most `max_new_tokens` new tokens. Answers go through the shared parser;
what cannot be parsed keeps its raw text and null bundles, and the metrics count it as failed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from kd_bundle.icl import ANSWER_MARKER, ICLConfig, answer_part, build_prompts
from kd_bundle.parsing import parse_bundles
from kd_bundle.predictions import PREDICTION_COLUMNS, bundles_from_positions, predictions_frame
from kd_bundle.student import StudentConfig, context_window, load_student

log = logging.getLogger(__name__)


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
    model, tokenizer = load_student(student, adapter)
    window = context_window(model, student)
    if window <= student.max_new_tokens:
        raise ValueError(f"predict_sessions: context window {window} <= max_new_tokens {student.max_new_tokens}")
    prompts = build_prompts(targets, retrieved, tokenizer, icl, window - student.max_new_tokens)
    return predict_bundles(targets, prompts, model, tokenizer, student)


def predict_bundles(
    sessions: pl.DataFrame, prompts: pl.DataFrame, model: Any, tokenizer: Any, cfg: StudentConfig
) -> pl.DataFrame:
    """Generate for every prompt, parse the answers, map product numbers to item ids. Columns: PREDICTION_COLUMNS."""
    joined = prompts.select("session_id", "prompt", "prefill").join(
        sessions.select("session_id", "item_ids"), on="session_id", how="inner"
    )
    prefills = joined["prefill"].to_list()
    started = time.perf_counter()
    texts = generate_texts(model, tokenizer, joined["prompt"].to_list(), cfg, prefills)
    log.info("generated %d answers in %.1f s", len(texts), time.perf_counter() - started)
    rows = [
        _prediction(sid, items, prefill + text)  # the prefill is the start of the answer
        for (sid, items), prefill, text in zip(joined.select("session_id", "item_ids").iter_rows(), prefills, texts)
    ]
    failed = sum(row["bundles"] is None for row in rows)
    if failed:
        log.warning("predict_bundles: %d of %d answers did not parse", failed, len(rows))
    return predictions_frame(rows).select(list(PREDICTION_COLUMNS)).sort("session_id")


def generate_texts(
    model: Any, tokenizer: Any, prompts: list[str], cfg: StudentConfig, prefills: list[str] | None = None
) -> list[str]:
    """The new text for each prompt, in input order. Batches hold prompts of similar length (little padding).
    `prefills` (the answer text already in each prompt) only tell the stop rule where the answer began."""
    import torch
    from transformers import GenerationConfig

    tokenizer.padding_side = "left"
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    generation = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=_stop_ids(model, tokenizer),
    )
    device = next(model.parameters()).device
    texts: dict[int, str] = {}
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        encoded = tokenizer([prompts[i] for i in batch], add_special_tokens=False, padding=True, return_tensors="pt")
        encoded = {k: v.to(device) for k, v in encoded.items()}
        stop = _AnswerClosed(tokenizer, encoded["input_ids"].shape[1], [prefills[i] if prefills else "" for i in batch])
        with torch.inference_mode():
            output = model.generate(**encoded, generation_config=generation, stopping_criteria=[stop])
        new = output[:, encoded["input_ids"].shape[1] :]
        for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
            texts[i] = text
    return [texts[i] for i in range(len(prompts))]


class _AnswerClosed:
    """Stops a row once its answer dict is closed: small students ramble on after it, paying decode steps."""

    def __init__(self, tokenizer: Any, prompt_width: int, prefills: list[str]):
        self.tokenizer, self.prompt_width, self.prefills = tokenizer, prompt_width, prefills

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        closed = [answer_closed(prefill + text) for prefill, text in zip(self.prefills, texts)]
        return torch.tensor(closed, dtype=torch.bool, device=input_ids.device)


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


def _prediction(session_id: int, item_ids: list[str], text: str) -> dict[str, Any]:
    parsed = parse_bundles(answer_part(text), len(item_ids))
    bundles = bundles_from_positions(parsed.bundles, item_ids) if parsed.bundles is not None else None
    return {"session_id": session_id, "bundles": bundles, "intents": parsed.intents, "raw": text}


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids of both the tokenizer and the model's generation config (chat models stop on either)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)
