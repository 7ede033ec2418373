"""Choosing an adapter on held-out data: what it writes on validation sessions, its answer loss there, and early
stopping on them.

The validation sessions are the data's `valid` split (never `test`). Two measurements, both taken before the first
step (the base itself, so a run that never beats the base says so) and every `eval_every` steps:
* the answer loss: examples built exactly like the training ones (same prompt, knowledge and canonical answer),
  scored by the same answer-only loss; cheap, but blind to what greedy decoding then writes (an adapter that learned
  "the whole session is one bundle" has a low loss and the strict precision of that positional rule);
* strict precision of decoded answers (`DecodedValidation`): the adapter answers the sessions through the grid's
  own prompt, grammar, parser and scorer, so the kept step is the one that writes the best bundles.
`EarlyStopping` keeps the LoRA weights of the best measurement (by strict precision, ties by loss, where decoding is
on; by loss otherwise) and stops after `patience` measurements without improvement.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import polars as pl

from kd_bundle.evaluation.metrics import score_predictions
from kd_bundle.student.generate import predict_bundles, prompt_budget
from kd_bundle.student.icl import ICLConfig, build_prompts
from kd_bundle.student.model import StudentConfig

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


class DecodedValidation:
    """Strict precision of what a model in training writes for the validation sessions: prompts are built once, as
    generate.predict_sessions builds the adapter's test prompts (its training knowledge `icl`, fitted to the context
    window less the new-token budget); every call decodes them greedily under each session's grammar and scores the
    answers against the sessions' bundles (metrics.score_predictions). A session that does not parse counts 0, as in
    the results tables. It reads the sessions' bundles to score, never to prompt."""

    def __init__(self, sessions: pl.DataFrame, retrieved: pl.DataFrame | None, tokenizer: Any, student: StudentConfig,
                 icl: ICLConfig, reasoning: bool = False):
        if sessions.height == 0:
            raise ValueError("DecodedValidation: no validation sessions to decode")
        self.sessions, self.retrieved, self.tokenizer = sessions, retrieved, tokenizer
        self.student, self.icl, self.reasoning = student, icl, reasoning
        self.prompts: pl.DataFrame | None = None

    def __call__(self, model: Any) -> float:
        """The model's strict precision on the sessions, decoded as inference applies the saved adapter
        (`inference_copy`); the model in training is left as it was."""
        if self.prompts is None:
            budget = prompt_budget(model, self.student, self.reasoning)
            self.prompts = build_prompts(self.sessions, self.retrieved, self.tokenizer, self.icl, budget)
        decoder = inference_copy(model)
        config = getattr(decoder, "config", None)
        cache = getattr(config, "use_cache", None)
        decoder.eval()
        if config is not None:
            config.use_cache = True  # training turns the KV cache off
        try:
            predictions = predict_bundles(self.sessions, self.prompts, decoder, self.tokenizer, self.student,
                                          self.reasoning)
        finally:
            if config is not None:
                config.use_cache = cache
            model.train()
        return float(score_predictions(predictions, self.sessions)["strict_precision"])


def inference_copy(model: Any) -> Any:
    """A plain-LoRA model as load_student applies its saved adapter: a copy with the LoRA weights merged into the
    base, one matmul per layer, so the figure is the one the saved adapter would score. (Why it was tried for speed:
    in the main job validation decoded ~3.0 s a session unmerged against 1.35 s for the merged adapter's test
    predictions; merging cut the two adapters' wall by under a minute each, so most of that gap lies elsewhere.)
    An NF4 model is decoded as it is: inference keeps its adapter beside the 4-bit layers too."""
    if getattr(model, "is_loaded_in_4bit", False) or not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


class EarlyStopping:
    """Tracks the validation curves, the best step and its LoRA weights (a copy of the trainable tensors only).

    A measurement is a validation loss (lower is better), a decoded strict precision (higher is better), or both;
    with both, precision decides and the loss breaks its ties (30 sessions give precision in coarse steps)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.precisions: list[float] = []
        self.best_step: int | None = None
        self._best_key: tuple[float, ...] | None = None
        self._best_state: dict[str, Any] | None = None
        self._since_best = 0

    @property
    def best_loss(self) -> float | None:
        return self._at_best(self.losses)

    @property
    def best_precision(self) -> float | None:
        return self._at_best(self.precisions)

    def record(self, step: int, loss: float | None, model: Any, precision: float | None = None) -> bool:
        """Note one measurement; True when training should stop (patience exhausted)."""
        if loss is None and precision is None:
            raise ValueError("EarlyStopping.record: a measurement needs a loss or a precision")
        self.steps.append(step)
        if loss is not None:
            self.losses.append(round(loss, 5))
        if precision is not None:
            self.precisions.append(round(precision, 5))
        key = tuple(value for value in (None if precision is None else -round(precision, 5),
                                        None if loss is None else round(loss, 5)) if value is not None)
        if self._best_key is None or _better(key, self._best_key):
            self.best_step, self._best_key, self._since_best = step, key, 0
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
        log.info("sft: kept step %d (validation strict precision %s, loss %s), not the last step %d", self.best_step,
                 self.best_precision, self.best_loss, last_step)

    def _at_best(self, values: list[float]) -> float | None:
        return values[self.steps.index(self.best_step)] if values and self.best_step is not None else None


def _better(key: tuple[float, ...], best: tuple[float, ...]) -> bool:
    """Lexicographically lower by more than rounding (1e-6 on the deciding value)."""
    for value, incumbent in zip(key, best):
        if value < incumbent - 1e-6:
            return True
        if value > incumbent + 1e-6:
            return False
    return False
