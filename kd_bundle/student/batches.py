"""Training batches: tokenised prompt/answer pairs grouped by length under a token budget, left-padded so every
answer ends at the last column, and the answer-only loss that reads just the columns that predict it."""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from kd_bundle.student.icl import EXAMPLE_COLUMNS


def bucket_batches(lengths: list[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped by similar length, each group's rows x longest length within `batch_tokens` (one row always fits)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending, so the newest row is the longest of its batch
        if current and ((len(current) + 1) * lengths[i] > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def tokenize(examples: pl.DataFrame, tokenizer: Any, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; prompt tokens are masked with -100. Over-long examples are an error."""
    rows = []
    for sid, prompt, completion in examples.select(EXAMPLE_COLUMNS).iter_rows():
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer_ids
        if len(ids) > max_length:
            raise ValueError(f"tokenize: session {sid} has {len(ids)} tokens > max_length {max_length}")
        rows.append((ids, [-100] * len(prompt_ids) + answer_ids))
    return rows


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> dict[str, Any]:
    """Left-padded batch: every answer ends at the last column, so the LM head can skip the prompt columns."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [[pad_id] * (width - len(r)) + r for r, _ in rows]
    labels = [[-100] * (width - len(lab)) + lab for _, lab in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r, _ in rows]
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    attention_mask = as_tensor(mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 whatever the padding
    return {"input_ids": as_tensor(ids), "attention_mask": attention_mask, "position_ids": position_ids,
            "labels": as_tensor(labels)}


def completion_loss(model: Any, inputs: dict[str, Any]) -> Any:
    """Mean next-token loss over the answer tokens, computing logits only for the last columns that predict them.

    Equal to the model's own loss with the same -100 labels, without the (batch x length x vocab) logits of the
    prompt: the LM head is 21% of SmolLM2's FLOPs, and fp32 logits of 4k tokens x 128k vocab are 2 GB for Llama 3.
    """
    import torch

    labels = inputs["labels"]
    answered = (labels != -100).any(dim=0).nonzero()
    keep = labels.shape[1] - int(answered[0]) + 1 if len(answered) else 2  # first answer column, and the one before
    batch = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**batch, logits_to_keep=keep).logits[:, :-1, :].float()
    targets = labels[:, labels.shape[1] - keep + 1 :]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def cycle(batches: list[list[int]], seed: int):
    rng = random.Random(seed)
    while True:
        order = list(batches)
        rng.shuffle(order)  # buckets keep their rows; only the order of buckets is random
        yield from order
