"""Fine-tune a QLoRA adapter of the student on knowledge-augmented examples.

`train_student` has the TRL/PEFT shape: seed -> model (NF4 4-bit + LoRA on CUDA, plain LoRA on a CPU; "nf4" asks
for 4-bit on a CPU too, through bitsandbytes' CPU backend) -> dataset (length buckets under a token budget, so almost
no compute goes to padding) -> a plain AdamW loop whose loss reads the answer columns only (no LM head over the
prompt) -> save the adapter with its configs and the base it was trained against (base.json), which inference loads.
Where loading in 4-bit fails, it trains plain LoRA and logs a warning. torch/transformers/peft are imported inside
functions, so importing kd_bundle stays fast. `python -m kd_bundle.student cfg.json` runs one training outside Prefect (see `_main`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from kd_bundle.student.icl import EXAMPLE_COLUMNS, ICLConfig, build_sft_examples
from kd_bundle.student.model import (
    BASE_FILE,
    StudentConfig,
    load_base,
    load_tokenizer,
    peak_memory_bytes,
    resolve_dtype,
)

log = logging.getLogger(__name__)


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
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="QLoRA paper used 0.05 for small models.")
    target_modules: str | tuple[str, ...] = Field("all-linear", description="peft target modules; all-linear as in QLoRA.")
    learning_rate: float = Field(2e-4, gt=0, description="QLoRA paper's rate for 7B-13B models.")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up, then linear decay to 0.")
    epochs: float = Field(2.0, gt=0, description="Passes over the examples; ignored when max_steps is set.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs (smoke runs).")
    batch_tokens: int = Field(
        2048, ge=64, description="Rows x longest row per batch; SmolLM2 on CPU peaks ~2.3 GB at 1024 with checkpointing."
    )
    max_batch_size: int = Field(16, ge=1, description="Rows per batch at most, whatever the budget.")
    max_length: int = Field(2048, ge=64, description="Tokens per example; knowledge is cut to fit, never the answer.")
    gradient_checkpointing: bool = Field(
        True, description="~1.4x compute for ~2.5x less activation memory (SmolLM2, 1k tokens: 5.7 -> 2.3 GB)."
    )
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = Field(0)


SMOKE = SFTConfig(max_steps=2, warmup_steps=0, batch_tokens=512, lora_r=4, lora_alpha=8, gradient_checkpointing=False)
# A CPU run on a real domain: 1k-token batches (16 GB-safe), 60 steps ~ 60k tokens, about a third of one epoch.
CPU_SFT = SFTConfig(max_steps=60, warmup_steps=5, batch_tokens=1024, learning_rate=3e-4)


class TrainResult(BaseModel, frozen=True):
    adapter_dir: Path
    steps: int
    examples: int
    train_tokens: int = Field(description="Real (non-padding) tokens processed, all steps.")
    padded_tokens: int = Field(description="Tokens processed including padding.")
    seconds: float
    tokens_per_second: float
    peak_memory_bytes: int
    quantized: bool
    losses: list[float]
    step_seconds: list[float] = Field(description="Wall time per step; the first includes one-off kernel set-up.")


def train_adapter(
    sessions: pl.DataFrame,
    retrieved: pl.DataFrame,
    thoughts: pl.DataFrame | None,
    student: StudentConfig,
    cfg: SFTConfig,
    out_dir: Path,
) -> TrainResult:
    """Build the SFT examples (knowledge in the input, thoughts as reasoning) and train an adapter into `out_dir`."""
    if cfg.reasoning and thoughts is None:
        raise ValueError("train_adapter: SFTConfig.reasoning needs a thoughts frame")
    tokenizer = load_tokenizer(student)
    examples = build_sft_examples(
        sessions, retrieved, thoughts if cfg.reasoning else None, tokenizer, cfg.knowledge, cfg.max_length,
        max_bundles=student.max_bundles, reasoning_tokens=student.reasoning_tokens,
    )
    return train_student(examples, student, cfg, out_dir)


def train_student(examples: pl.DataFrame, student: StudentConfig, cfg: SFTConfig, out_dir: Path) -> TrainResult:
    """QLoRA (or LoRA) on prompt/completion pairs; loss on the completion only. Saves adapter + configs in `out_dir`."""
    import torch

    missing = [c for c in EXAMPLE_COLUMNS if c not in examples.columns]
    if missing or examples.height == 0:
        raise ValueError(f"train_student: need a non-empty frame with {EXAMPLE_COLUMNS}; missing {missing}")
    # 1) seed, 2) model with LoRA, 3) length-bucketed batches, 4) AdamW loop, 5) save
    _seed_everything(cfg.seed)
    tokenizer = load_tokenizer(student)
    model, quantized = _trainable_model(student, cfg)
    rows = _tokenize(examples, tokenizer, cfg.max_length)
    batches = bucket_batches([len(ids) for ids, _ in rows], cfg.batch_tokens, cfg.max_batch_size)
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(batches)))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg.warmup_steps, steps))
    device = next(model.parameters()).device
    model.train()
    losses, step_seconds, real, padded = [], [], 0, 0
    started = time.perf_counter()
    for step, batch in zip(range(steps), _cycle(batches, cfg.seed)):
        step_started = time.perf_counter()
        inputs = _collate([rows[i] for i in batch], tokenizer.pad_token_id, device)
        loss = completion_loss(model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        step_seconds.append(time.perf_counter() - step_started)
        real += int(inputs["attention_mask"].sum())
        padded += inputs["attention_mask"].numel()
        log.info("sft step %d/%d loss %.4f, %s tokens, %.1f s", step + 1, steps, losses[-1],
                 tuple(inputs["input_ids"].shape), step_seconds[-1])
    seconds = time.perf_counter() - started
    dtype, _ = resolve_dtype(student.dtype, device.type, training=True)  # what load_base trained in (NF4: compute)
    base = {"quantized": quantized, "dtype": str(dtype).removeprefix("torch.")}
    _save_adapter(model, student, cfg, out_dir, losses, base)
    return TrainResult(
        adapter_dir=out_dir, steps=len(losses), examples=examples.height, train_tokens=real, padded_tokens=padded,
        seconds=seconds, tokens_per_second=real / max(seconds, 1e-9), peak_memory_bytes=peak_memory_bytes(),
        quantized=quantized, losses=losses, step_seconds=step_seconds,
    )


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


def _trainable_model(student: StudentConfig, cfg: SFTConfig) -> tuple[Any, bool]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, quantized = load_base(student, quantize=wants_4bit(cfg), training=True)
    if quantized:  # fp32 norms and embeddings; checkpointing is enabled below, the same way for both paths
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
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
    return get_peft_model(model, lora), quantized


def wants_4bit(cfg: SFTConfig) -> bool:
    """Whether training asks for an NF4 base: always with "nf4", on CUDA with "auto"."""
    if cfg.quantization != "auto":
        return cfg.quantization == "nf4"
    import torch

    return torch.cuda.is_available()


def _tokenize(examples: pl.DataFrame, tokenizer: Any, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; prompt tokens are masked with -100. Over-long examples are an error."""
    rows = []
    for sid, prompt, completion in examples.select(EXAMPLE_COLUMNS).iter_rows():
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer_ids
        if len(ids) > max_length:
            raise ValueError(f"train_student: session {sid} has {len(ids)} tokens > max_length {max_length}")
        rows.append((ids, [-100] * len(prompt_ids) + answer_ids))
    return rows


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> dict[str, Any]:
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


def _cycle(batches: list[list[int]], seed: int):
    rng = random.Random(seed)
    while True:
        order = list(batches)
        rng.shuffle(order)  # buckets keep their rows; only the order of buckets is random
        yield from order


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _save_adapter(model: Any, student: StudentConfig, cfg: SFTConfig, out_dir: Path, losses: list[float],
                  base: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = student.model  # a name, not this machine's cache path
    model.save_pretrained(str(out_dir))
    (out_dir / "student_config.json").write_text(student.model_dump_json(indent=1))
    (out_dir / "sft_config.json").write_text(cfg.model_dump_json(indent=1))
    (out_dir / "losses.json").write_text(json.dumps(losses))
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
