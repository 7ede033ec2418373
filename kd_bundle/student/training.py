"""Fine-tune a QLoRA adapter of the student on knowledge-augmented examples, chosen on the validation split.

`train_student` has the TRL/PEFT shape: seed -> model (NF4 4-bit + LoRA on CUDA, plain LoRA on a CPU; "nf4" asks
for 4-bit on a CPU too, through bitsandbytes' CPU backend) -> dataset (length buckets under a token budget, so almost
no compute goes to padding) -> a plain AdamW loop whose loss reads the answer columns only (no LM head over the
prompt), with validation sessions measured every few steps (kd_bundle.student.validation: the strict precision
of what the adapter writes for them, through the grid's prompt, grammar and scorer, and their answer loss; the best
step is kept, patience stops the run) -> save the adapter with its configs, its curves and the base it was
trained against (base.json), which inference loads. Gradient checkpointing and bf16 autocast are chosen by what the
hardware needs (kd_bundle.student.compute). Where loading in 4-bit fails, it trains plain LoRA and logs a warning.
torch/transformers/peft are imported inside functions, so importing kd_bundle stays fast.
`python -m kd_bundle.student cfg.json` runs one training outside Prefect (see `_main`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.student import compute
from kd_bundle.student.batches import bucket_batches, collate, completion_loss, cycle, tokenize
from kd_bundle.student.icl import EXAMPLE_COLUMNS, ICLConfig, build_sft_examples
from kd_bundle.student.model import (
    BASE_FILE,
    StudentConfig,
    load_base,
    load_tokenizer,
    peak_memory_bytes,
    resolve_dtype,
)
from kd_bundle.student.validation import DecodedValidation, EarlyStopping, validation_loss, validation_sessions

log = logging.getLogger(__name__)
# in an adapter folder: {"train", "valid_steps", "valid_losses", "valid_precisions", "best_step"}
CURVES_FILE = "curves.json"


class SFTConfig(BaseModel, frozen=True, extra="forbid"):
    """QLoRA hyper-parameters and which knowledge the training examples carry."""

    knowledge: ICLConfig = Field(
        ICLConfig(formats=(), demonstrations=1, max_lines=10),
        description="Retrieved knowledge in the training input (patterns, rules ...); () = plain session -> bundles.",
    )
    reasoning: bool = Field(False, description="Thoughts as the reasoning before the answer (needs a thoughts frame).")
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="nf4 = QLoRA (Dettmers et al. 2023); none = LoRA in the inference dtype; auto = nf4 on "
        "CUDA, where it saves the memory that matters, none on a CPU, where an NF4 base costs the 135M student "
        "answer quality and decodes ~2.5x slower (bench/README.md, adapter_base.py); an adapter meets its own base.")
    lora_r: int = Field(16, ge=1, description="LoRA rank; the issue's H100 reference used r=16.")
    lora_alpha: int = Field(32, ge=1, description="Scale alpha/r = 2, the common QLoRA setting.")
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="0 as LLaMA-Factory's default (QLoRA used 0.05 for small models); any "
        "dropout makes peft copy each LoRA input, 25% of a CPU step (bench/README.md); validation selection "
        "guards against overfitting instead.")
    target_modules: str | tuple[str, ...] = Field("all-linear", description="peft target modules; all-linear as in QLoRA.")
    learning_rate: float = Field(2e-4, gt=0, description="QLoRA paper's rate for 7B-13B models.")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(
        0.06, ge=0.0, lt=1.0, description="Linear warm-up over this share of the run's steps, then linear decay to 0.")
    epochs: float = Field(2.0, gt=0, description="Passes over the examples, the unit of a run; early stopping may "
                          "end it sooner. Ignored when max_steps is set.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs (smoke runs).")
    valid_sessions: int = Field(
        60, ge=0, description="Sessions of the `valid` split (a seeded sample) on which the kept checkpoint is "
        "chosen (select_by); 0 = no validation, the last step is kept. Never the test split.")
    select_by: Literal["strict_precision", "loss"] = Field(
        "strict_precision", description="What chooses the kept step on the validation sessions: strict_precision = "
        "the adapter decodes them through the grid's prompt, grammar and scorer at every measurement (ties: lower "
        "loss), which sees a habit such as 'the whole session is one bundle' that the teacher-forced loss rewards; "
        "loss = the answer loss only (cheaper: no decoding). Both are recorded where measured.")
    eval_every: int | None = Field(None, ge=1, description="Steps between validation measurements; None = ten per run.")
    patience: int | None = Field(
        3, ge=1, description="Validations without improvement before training stops; None = run every step.")
    batch_tokens: int = Field(
        2048, ge=64, description="Rows x longest row per batch; SmolLM2 on CPU peaks ~2.3 GB at 1024 with checkpointing."
    )
    max_batch_size: int = Field(16, ge=1, description="Rows per batch at most, whatever the budget.")
    max_length: int = Field(2048, ge=64, description="Tokens per example; knowledge is cut to fit, never the answer.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="~1.4x compute for ~2.5x less activation memory (SmolLM2, 1k tokens: 5.7 -> 2.3 GB); "
        "auto = only when a batch's activations would not fit in half the free memory (kd_bundle.student.compute).")
    fp32_lora_sums: bool = Field(
        True, description="Under autocast, add each LoRA branch to its base layer's output in fp32 (the base returns "
        "fp32): in bf16 a small LoRA delta rounds away in the forward pass.")
    autocast: Literal["auto", "bf16", "none"] = Field(
        "auto", description="bf16 autocast of each step's matmuls (weights, LoRA sums and AdamW states stay fp32); "
        "auto = where a CPU has native bf16 (AMX, AVX512-BF16) and the weights are fp32. Measured on an AVX512-BF16 "
        "CPU: 1.5x the fp32 tokens/s, validation loss after equal steps within 0.5% of fp32 (bench/README.md).")
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = Field(0)


SMOKE = SFTConfig(max_steps=2, warmup_ratio=0.0, batch_tokens=512, lora_r=4, lora_alpha=8, gradient_checkpointing=False,
                  valid_sessions=4, eval_every=1)
# A CPU run on a real domain: one epoch in 1k-token batches (16 GB-safe), validated on 60 sessions.
CPU_SFT = SFTConfig(epochs=1.0, batch_tokens=1024, learning_rate=3e-4)


class TrainResult(BaseModel, frozen=True):
    adapter_dir: Path
    steps: int
    examples: int
    train_tokens: int = Field(description="Real (non-padding) tokens processed, all steps.")
    padded_tokens: int = Field(description="Tokens processed including padding.")
    seconds: float = Field(description="The whole run, validation included.")
    valid_seconds: float = Field(0.0, description="Of which measuring validation losses.")
    tokens_per_second: float = Field(description="Training tokens per second of training (validation excluded).")
    peak_memory_bytes: int
    quantized: bool
    losses: list[float]
    step_seconds: list[float] = Field(description="Wall time per step; the first includes one-off kernel set-up.")
    step_tokens: list[int] = Field(default_factory=list, description="Real (non-padding) tokens per step.")
    valid_steps: list[int] = Field(
        default_factory=list, description="Steps after which the validation loss was measured (0 = the base).")
    valid_losses: list[float] = Field(default_factory=list, description="Validation answer loss at those steps.")
    valid_precisions: list[float] = Field(
        default_factory=list, description="Strict precision of the decoded validation answers at those steps "
        "(select_by='strict_precision').")
    best_step: int | None = Field(None, description="The step whose weights were kept (None: no validation, the last).")
    stopped_early: bool = False
    valid_examples: int = 0
    gradient_checkpointing: bool = False
    autocast: str | None = None


def train_adapter(
    sessions: pl.DataFrame,
    retrieved: pl.DataFrame,
    thoughts: pl.DataFrame | None,
    student: StudentConfig,
    cfg: SFTConfig,
    out_dir: Path,
) -> TrainResult:
    """Build the SFT examples (knowledge in the input, thoughts as reasoning) of the training split, the same of a
    sample of the validation split, and train an adapter into `out_dir`, keeping the best validated step.

    An adapter that reasons has no validation loss (the teacher distils training sessions only, so no validation
    session has a thought to score the answer after); with select_by="strict_precision" it is chosen by what it
    writes, reasoning first, like any other; with "loss" it keeps its last step (logged)."""
    if cfg.reasoning and thoughts is None:
        raise ValueError("train_adapter: SFTConfig.reasoning needs a thoughts frame")
    tokenizer = load_tokenizer(student)
    build = partial(build_sft_examples, retrieved=retrieved, thoughts=thoughts if cfg.reasoning else None,
                    tokenizer=tokenizer, cfg=cfg.knowledge, max_length=cfg.max_length,
                    max_bundles=student.max_bundles, reasoning_tokens=student.reasoning_tokens)
    examples = build(sessions)
    validation, decoded = None, None
    valid = validation_sessions(sessions, cfg.valid_sessions, cfg.seed)
    if cfg.valid_sessions and valid.height == 0:
        log.warning("train_adapter: the data has no validation sessions; the adapter keeps its last step")
    elif cfg.valid_sessions:
        if cfg.reasoning and cfg.select_by == "loss":
            log.warning("train_adapter: a reasoning adapter has no validation loss (no validation session has a "
                        "thought) and select_by='loss'; it keeps its last step")
        elif not cfg.reasoning:
            validation = build(valid, split="valid")
        if cfg.select_by == "strict_precision":
            # the prompt the adapter meets at test time (flows.cells.test_prompt): its training knowledge and counts
            decoded = DecodedValidation(valid.filter(pl.col("bundles").list.len() > 0), retrieved, tokenizer, student,
                                        cfg.knowledge, cfg.reasoning)
    return train_student(examples, student, cfg, out_dir, validation, decoded)


def train_student(examples: pl.DataFrame, student: StudentConfig, cfg: SFTConfig, out_dir: Path,
                  validation: pl.DataFrame | None = None,
                  decoded: Callable[[Any], float] | None = None) -> TrainResult:
    """QLoRA (or LoRA) on prompt/completion pairs; loss on the completion only. With `validation` (examples of
    held-out sessions) and / or `decoded` (the strict precision of the model's answers to them), both are measured
    before the first step and every `eval_every` steps, training stops after `patience` measurements without
    improvement, and the best step's weights are kept (EarlyStopping: precision first, then loss).
    Saves adapter + configs + curves in `out_dir`."""
    import torch

    missing = [c for c in EXAMPLE_COLUMNS if c not in examples.columns]
    if missing or examples.height == 0:
        raise ValueError(f"train_student: need a non-empty frame with {EXAMPLE_COLUMNS}; missing {missing}")
    # 1) seed, 2) model with LoRA, 3) length-bucketed batches, 4) AdamW loop, 5) save
    _seed_everything(cfg.seed)
    tokenizer = load_tokenizer(student)
    rows = tokenize(examples, tokenizer, cfg.max_length)
    batches = bucket_batches([len(ids) for ids, _ in rows], cfg.batch_tokens, cfg.max_batch_size)
    model, quantized, checkpointing = _trainable_model(student, cfg, max(len(rows[b[-1]][0]) * len(b) for b in batches))
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(batches)))
    warmup = round(cfg.warmup_ratio * steps)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, steps))
    parameter = next(model.parameters())
    device = parameter.device
    cast = compute.autocast_dtype(cfg.autocast, device.type, parameter.dtype)
    if cast is not None and cfg.fp32_lora_sums:
        compute.keep_lora_sums_fp32(model)
    to_batch = partial(collate, pad_id=tokenizer.pad_token_id, device=device)

    def answer_loss(model: Any, inputs: dict[str, Any]) -> Any:
        with compute.autocast(device.type, cast):
            return completion_loss(model, inputs)

    valid_rows = tokenize(validation, tokenizer, cfg.max_length) if validation is not None else []
    valid_batches = bucket_batches([len(ids) for ids, _ in valid_rows], cfg.batch_tokens, cfg.max_batch_size)
    stopping = EarlyStopping(cfg.patience)
    eval_every = cfg.eval_every or max(1, math.ceil(steps / 10))
    valid_seconds = 0.0

    validating = bool(valid_rows) or decoded is not None

    def validate(step: int) -> bool:
        """Measure, log, record; True when patience is exhausted."""
        nonlocal valid_seconds
        validation_started = time.perf_counter()
        loss = validation_loss(model, valid_rows, valid_batches, to_batch, answer_loss) if valid_rows else None
        precision = decoded(model) if decoded is not None else None
        elapsed = time.perf_counter() - validation_started
        valid_seconds += elapsed
        log.info("sft step %d validation: strict precision %s, answer loss %s (%.1f s)", step,
                 "-" if precision is None else f"{precision:.3f}", "-" if loss is None else f"{loss:.4f}", elapsed)
        return stopping.record(step, loss, model, precision)

    started = time.perf_counter()
    if validating:
        validate(0)
    model.train()
    losses, step_seconds, step_tokens, padded = [], [], [], 0
    for step, batch in zip(range(steps), cycle(batches, cfg.seed)):
        step_started = time.perf_counter()
        inputs = to_batch([rows[i] for i in batch])
        loss = answer_loss(model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        step_seconds.append(time.perf_counter() - step_started)
        step_tokens.append(int(inputs["attention_mask"].sum()))
        padded += inputs["attention_mask"].numel()
        log.info("sft step %d/%d loss %.4f, %s tokens, %.1f s", step + 1, steps, losses[-1],
                 tuple(inputs["input_ids"].shape), step_seconds[-1])
        if validating and ((step + 1) % eval_every == 0 or step + 1 == steps):
            if validate(step + 1) and step + 1 < steps:
                log.info("sft: no better validation measurement in %d; stopping at step %d of %d",
                         cfg.patience, step + 1, steps)
                break
    seconds, real = time.perf_counter() - started, sum(step_tokens)
    stopping.restore_best(model, len(losses))
    dtype, _ = resolve_dtype(student.dtype, device.type, training=True)  # what load_base trained in (NF4: compute)
    base = {"quantized": quantized, "dtype": str(dtype).removeprefix("torch.")}
    curves = {"train": losses, "valid_steps": stopping.steps, "valid_losses": stopping.losses,
              "valid_precisions": stopping.precisions, "best_step": stopping.best_step}
    _save_adapter(model, student, cfg, out_dir, curves, base)
    return TrainResult(
        adapter_dir=out_dir, steps=len(losses), examples=examples.height, train_tokens=real, padded_tokens=padded,
        seconds=seconds, valid_seconds=valid_seconds, tokens_per_second=real / max(seconds - valid_seconds, 1e-9),
        peak_memory_bytes=peak_memory_bytes(), quantized=quantized, losses=losses, step_seconds=step_seconds,
        step_tokens=step_tokens, valid_steps=stopping.steps, valid_losses=stopping.losses,
        valid_precisions=stopping.precisions, best_step=stopping.best_step, stopped_early=len(losses) < steps,
        valid_examples=len(valid_rows), gradient_checkpointing=checkpointing,
        autocast=None if cast is None else str(cast).removeprefix("torch."),
    )


def _trainable_model(student: StudentConfig, cfg: SFTConfig, batch_tokens: int) -> tuple[Any, bool, bool]:
    """(peft model, quantized, checkpointing); `batch_tokens`: the largest batch, padding included."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, quantized = load_base(student, quantize=wants_4bit(cfg), training=True)
    if quantized:  # fp32 norms and embeddings; checkpointing is enabled below, the same way for both paths
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    parameter = next(model.parameters())
    checkpointing = compute.wants_checkpointing(cfg.gradient_checkpointing, model.config, batch_tokens,
                                                parameter.device.type, 2 if quantized else parameter.element_size())
    if checkpointing:
        # transformers 5 renamed the call (the old name, which peft's helper uses, warns); non-reentrant is torch's
        # recommended checkpointing. The input-grad hook below is what reentrant checkpointing would need: harmless here
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), quantized, checkpointing


def wants_4bit(cfg: SFTConfig) -> bool:
    """Whether training asks for an NF4 base: always with "nf4", on CUDA with "auto"."""
    if cfg.quantization != "auto":
        return cfg.quantization == "nf4"
    import torch

    return torch.cuda.is_available()


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _save_adapter(model: Any, student: StudentConfig, cfg: SFTConfig, out_dir: Path, curves: dict[str, Any],
                  base: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = student.model  # a name, not this machine's cache path
        if isinstance(peft_config.target_modules, (set, frozenset)):
            # peft writes "all-linear" resolved as a set, whose order changes with every process's hash seed: sorted,
            # the same training gives the same bytes, hence the same store hash, in any process
            peft_config.target_modules = sorted(peft_config.target_modules)
    model.save_pretrained(str(out_dir))
    (out_dir / "student_config.json").write_text(student.model_dump_json(indent=1))
    (out_dir / "sft_config.json").write_text(cfg.model_dump_json(indent=1))
    (out_dir / CURVES_FILE).write_text(json.dumps(curves))  # train losses, validation losses, the kept step
    (out_dir / BASE_FILE).write_text(json.dumps(base))  # inference applies the adapter to this same base


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _main(argv: list[str]) -> int:
    """`python -m kd_bundle.student cfg.json`: {"sessions": parquet, "retrieved": parquet, "thoughts": parquet|null,
    "student": {...}, "sft": {...}, "out_dir": folder}. Prints the TrainResult as JSON."""
    spec = json.loads(Path(argv[0]).read_text())
    read = lambda key: pl.read_parquet(spec[key]) if spec.get(key) else None  # noqa: E731
    result = train_adapter(
        read("sessions"), read("retrieved"), read("thoughts"), StudentConfig(**spec.get("student", {})),
        SFTConfig(**spec.get("sft", {})), Path(spec["out_dir"]),
    )
    print(result.model_dump_json(indent=1))
    return 0
