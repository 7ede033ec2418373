"""Choosing an adapter on held-out data: the answer loss on validation sessions, and early stopping on it.

The validation sessions are the data's `valid` split (never `test`): examples built exactly like the training ones
(same prompt, knowledge and canonical answer), scored by the same answer-only loss. Training measures it before the
first step (the base itself, so a run that never beats the base says so) and every `eval_every` steps, keeps the
LoRA weights of the best measurement, and stops after `patience` measurements without improvement.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

log = logging.getLogger(__name__)


def validation_sessions(sessions: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    """At most `limit` sessions of the `valid` split, a seeded sample in session order (the same for every adapter
    trained with one seed, so their validation curves are comparable)."""
    valid = sessions.filter(pl.col("split") == "valid")
    if limit <= 0 or valid.height == 0:
        return valid.head(0)
    if valid.height > limit:
        valid = valid.sample(n=limit, seed=seed, shuffle=True)
    return valid.sort("session_id")


def validation_loss(model: Any, rows: list[tuple[list[int], list[int]]], batches: list[list[int]],
                    collate: Any, loss_fn: Any) -> float:
    """Mean answer-token loss over every validation row (each batch weighted by its answer tokens), without dropout
    and without gradients; the model goes back to training mode."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = collate([rows[i] for i in batch])
            answered = int((inputs["labels"] != -100).sum())
            total += float(loss_fn(model, inputs)) * answered
            tokens += answered
    model.train()
    return total / max(tokens, 1)


class EarlyStopping:
    """Tracks the validation curve, the best step and its LoRA weights (a copy of the trainable tensors only)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.best_step: int | None = None
        self.best_loss = float("inf")
        self._best_state: dict[str, Any] | None = None
        self._since_best = 0

    def record(self, step: int, loss: float, model: Any) -> bool:
        """Note one measurement; True when training should stop (patience exhausted)."""
        self.steps.append(step)
        self.losses.append(round(loss, 5))
        if loss < self.best_loss - 1e-6:
            self.best_step, self.best_loss, self._since_best = step, loss, 0
            self._best_state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
            return False
        self._since_best += 1
        return self.patience is not None and self._since_best >= self.patience

    def restore_best(self, model: Any, last_step: int) -> None:
        """Put the best measurement's LoRA weights back (nothing to do when the last step was the best)."""
        import torch

        if self._best_state is None or self.best_step == last_step:
            return
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self._best_state:
                    parameter.copy_(self._best_state[name])
        log.info("sft: kept step %d (validation loss %.4f), not the last step %d", self.best_step, self.best_loss,
                 last_step)
