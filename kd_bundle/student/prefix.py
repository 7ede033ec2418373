"""Batched inputs for generate, with the prompt prefix that every prompt of one call shares prefilled once.

Every prompt of a call opens with the same chat turn and instruction (~70 tokens of a ~300-token zero-shot prompt),
and with the same domain-level lines where a prompt carries them (consolidated rules, mined patterns, ahead of the
session); per-session knowledge (demonstrations, neighbours' rules) is not shared. Prefill is most of a CPU decode's
time (profiled on SmolLM2, fp32, 2 cores: ~60% of a validation decode, nearly all of it the linear layers), so the
shared tokens are prefilled once, at batch 1, and every batch starts from a copy of that KV cache repeated per row.
A row's own tokens follow the prefix, left-padded *between* the two: the attention mask hides the padding and
generate numbers positions by the mask, so every row sees the positions it would see alone, and greedy answers equal
uncached ones up to float rounding (tests/kd_bundle/student/test_generate.py compares them in fp32). Without a
shared prefix worth caching, the rows are plainly left-padded, as the tokenizer would pad them.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Iterator
from typing import Any

# Below this many shared tokens a cache buys less than its copy costs; the zero-shot prompt shares ~70.
MIN_SHARED_TOKENS = 16


def shared_prefix_length(ids: list[list[int]]) -> int:
    """Tokens every list starts with, leaving each list at least one token of its own (a row's first step needs an
    input after the cache)."""
    if not ids:
        return 0
    first, limit = ids[0], min(len(row) for row in ids) - 1
    length = 0
    while length < limit and all(row[length] == first[length] for row in ids):
        length += 1
    return length


class PromptBatches:
    """Builds generate's inputs for batches of tokenised prompts; `prefill_seconds` is the one-off prefix prefill."""

    def __init__(self, model: Any, ids: list[list[int]], pad_id: int, device: Any):
        import torch

        started = time.perf_counter()
        self.ids, self.pad_id, self.device = ids, pad_id, device
        shared = shared_prefix_length(ids)
        self.prefix: list[int] = ids[0][:shared] if shared >= MIN_SHARED_TOKENS else []
        self.cache = None
        if self.prefix:
            with torch.inference_mode():
                output = model(input_ids=torch.tensor([self.prefix], device=device), use_cache=True)
            self.cache = output.past_key_values
        self.prefill_seconds = time.perf_counter() - started

    def inputs(self, rows: list[int]) -> dict[str, Any]:
        """input_ids, attention_mask (and the repeated prefix cache) for the prompts numbered `rows`."""
        import torch

        own = [self.ids[i][len(self.prefix):] for i in rows]
        width = max(len(tokens) for tokens in own)
        input_ids = [self.prefix + [self.pad_id] * (width - len(t)) + t for t in own]
        mask = [[1] * len(self.prefix) + [0] * (width - len(t)) + [1] * len(t) for t in own]
        batch: dict[str, Any] = {"input_ids": torch.tensor(input_ids, device=self.device),
                                 "attention_mask": torch.tensor(mask, device=self.device)}
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)  # generate extends the cache it is given
            cache.batch_repeat_interleave(len(rows))
            batch["past_key_values"] = cache
        return batch


@contextlib.contextmanager
def quiet_cache_argument() -> Iterator[None]:
    """transformers 5 renames generate's `past_key_values` to `cache` and warns on every call with the old name until
    6.0; the old name is the one every 5.x release takes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        yield
