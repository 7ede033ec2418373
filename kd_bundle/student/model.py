"""The student model: load it by name or path, with its tokenizer, in the dtype this device runs best.

`load_student` gives (model, tokenizer) ready for generation, an adapter applied when given; `load_base` is the
shared loader (NF4 4-bit when asked and possible, with a warning when it falls back) that training builds on.
torch/transformers/peft are imported inside functions, so importing kd_bundle stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class StudentConfig(BaseModel, frozen=True, extra="forbid"):
    """Which model is the student and how it generates (shared by ICL, SFT and SFT+ICL)."""

    model: str = Field("smollm2", description="'smollm2' (shipped SmolLM2-135M-Instruct), an HF name in the local cache, or a folder.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bf16 on CUDA and on CPUs with native bf16 flags, else fp32; CPU training: fp32."
    )
    max_context: int | None = Field(None, ge=64, description="Prompt + answer token cap; None = the model's own window.")
    max_new_tokens: int = Field(192, ge=1, le=4096, description="Bound on generated tokens; 10 bundles of 3 products ~ 150.")
    batch_size: int = Field(
        4, ge=1, description="Prompts generated together (left padded, sorted by length); on 2 CPU cores 2-4 beat 6+."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding, the default for scoring.")
    load_in_4bit: bool | None = Field(
        None, description="NF4 base at inference. None = the base the adapter was trained against (an adapter "
        "trained in NF4 meets an NF4 base, a plain LoRA one the plain base in its training dtype); no adapter: no.")
    decoding: Literal["grammar", "free"] = Field(
        "grammar", description="grammar = only parsable answers over the session's products (kd_bundle.student.grammar); "
        "free = unconstrained."
    )
    max_bundles: int = Field(
        5, ge=1, le=10, description="Grammar: bundles per answer at most; 5 is the most any training session of the "
        "three domains has (20 of 623 Electronic ones have 4-5), so every answer the student is taught fits.")
    intents: bool = Field(False, description="Grammar: each bundle as {'products': [...], 'intent': '1-5 words'}.")
    reasoning_tokens: int = Field(
        800, ge=1, le=4096, description="Cap on the free reasoning line of a student trained with reasoning "
        "(thoughts), "
        "on top of max_new_tokens for the answer; it covers the thoughts it is trained on (ThoughtConfig.max_tokens "
        "768 + the marker); a longer thought is left out of training, and counted."
    )


class StudentModelError(RuntimeError):
    """A student that cannot be used: missing, without weights, or without a chat template."""


def load_tokenizer(cfg: StudentConfig) -> Any:
    """The student's tokenizer, left-padded for generation; a tokenizer without a chat template is an error."""
    from transformers import AutoTokenizer

    path = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "chat_template", None):
        raise StudentModelError(
            f"student {cfg.model!r} ({path}): the tokenizer has no chat template; use an instruct/chat model "
            "or add `chat_template` to its tokenizer_config.json"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


BASE_FILE = "base.json"  # in an adapter folder: the base it was trained against, {"quantized": bool, "dtype": str}


def load_student(cfg: StudentConfig, adapter: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) ready for generation; with `adapter`, the LoRA is applied (merged when not 4-bit) to the
    base it was trained against, unless `cfg.load_in_4bit` / `cfg.dtype` say otherwise: an NF4-trained adapter
    merged into a full-precision base meets weights it never saw in training (bench/README.md measures it)."""
    tokenizer = load_tokenizer(cfg)
    trained = trained_base(adapter)
    quantize = cfg.load_in_4bit if cfg.load_in_4bit is not None else bool(trained.get("quantized"))
    if trained.get("dtype") and cfg.dtype == "auto":
        cfg = cfg.model_copy(update={"dtype": trained["dtype"]})
    model, quantized = load_base(cfg, quantize=quantize)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if not quantized:
            model = model.merge_and_unload()  # one matmul per layer again: faster generation
    return model.eval(), tokenizer


def trained_base(adapter: Path | None) -> dict[str, Any]:
    """What the adapter folder says it was trained against ({} without adapter, or for an adapter saved before)."""
    if adapter is None or not (Path(adapter) / BASE_FILE).exists():
        return {}
    return json.loads((Path(adapter) / BASE_FILE).read_text())


def model_path(cfg: StudentConfig) -> Path:
    from kd_bundle.models import ModelUnavailable, resolve_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local or nothing: never wait on a hub call
    try:
        return resolve_model_path(cfg.model)
    except ModelUnavailable as exc:
        raise StudentModelError(f"student {cfg.model!r}: {exc}") from exc


def context_window(model: Any, cfg: StudentConfig) -> int:
    window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    return min(window, cfg.max_context) if cfg.max_context else window


def load_base(cfg: StudentConfig, quantize: bool, training: bool = False) -> tuple[Any, bool]:
    """(model, is_4bit). NF4 with double quantization when asked; a failure to load 4-bit falls back, with a warning."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 272-step bar per 0.3 s load, once per task, buries the flow's log lines
    path = model_path(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype, why = resolve_dtype(cfg.dtype, device, training)
    log.info("student %s on %s in %s (%s)", cfg.model, device, str(dtype).removeprefix("torch."), why)
    if quantize:
        try:
            from transformers import BitsAndBytesConfig

            bnb = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
            )
            model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=bnb, device_map={"": device}, dtype=dtype)
            return model, True
        except Exception as exc:  # bitsandbytes missing, no backend for this device, unsupported layer shapes ...
            log.warning("4-bit NF4 loading failed on %s (%s: %s); using plain LoRA in %s", device, type(exc).__name__, exc, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except OSError as exc:
        raise StudentModelError(f"student {cfg.model!r} ({path}): cannot load weights: {exc}") from exc
    return model.to(device), False


def resolve_dtype(name: str, device: str, training: bool = False) -> tuple[Any, str]:
    """(torch dtype, why). "auto": bf16 on CUDA; on CPU bf16 for inference only with native bf16 (AVX512-BF16 or
    AMX-BF16 flags), fp32 elsewhere and for CPU training (LoRA weights and AdamW states in bf16 lose small updates).
    Measured here (AVX-512 without a bf16 flag, oneDNN emulates bf16): SmolLM2 prefill of 300 tokens 502 tok/s
    in fp32 against 156 tok/s in bf16, so emulated bf16 is not "native" and gets fp32."""
    import torch

    if name != "auto":
        return getattr(torch, name), "asked for"
    if device == "cuda":
        return torch.bfloat16, "CUDA"
    if training:
        return torch.float32, "CPU training keeps fp32 master weights"
    fast, why = cpu_bf16()
    return (torch.bfloat16 if fast else torch.float32), why


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU has native bf16 matmuls (the /proc/cpuinfo flags), and why."""
    import torch

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        flags = set()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return True, f"CPU has native bf16 ({', '.join(native)})"
    return False, f"no native bf16 flag on this {torch.backends.cpu.get_cpu_capability()} CPU"


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated on CUDA; the process's peak resident memory otherwise."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
