"""How a training step computes: gradient checkpointing only when a batch's activations would not fit, and bf16
autocast where the hardware multiplies bf16 natively. Both change speed, never what is learned in principle.

Measured on SmolLM2-135M (bench/README.md): checkpointing costs ~1.4x compute and saves ~2.5x activation memory
(1k tokens: 5.7 -> 2.3 GB), so it is worth it only where memory is the limit; on a CPU with AMX / AVX512-BF16 a bf16
matmul runs several times faster than fp32, while the LoRA weights and AdamW states stay fp32 (autocast casts the
operands of each matmul, not the parameters). Under autocast each LoRA layer adds its branch to the base output in
fp32 (`keep_lora_sums_fp32`): in bf16 that sum rounds a small LoRA delta away, and the adapter learns from a forward
pass that does not contain it (measured: +7% validation loss after equal steps; with fp32 sums +0.5%, 1.5x faster).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from kd_bundle.student.model import cpu_bf16

log = logging.getLogger(__name__)

# Activation bytes kept for the backward pass, per token and layer, in units of the dtype's size: ~18 x hidden +
# 10 x intermediate. Calibrated on SmolLM2 in fp32 (30 layers, 576 / 1,536): 3.1 MB per token against the measured
# 3.4 MB (5.7 GB without checkpointing minus 2.3 GB with it, at 1,024 tokens).
_HIDDEN_FACTOR, _INTERMEDIATE_FACTOR = 18, 10
_MEMORY_SHARE = 0.5  # of the memory free at the start: the rest is weights, optimizer states, the OS and the flow


def activation_bytes(model_config: Any, tokens: int, dtype_bytes: int) -> int:
    """Estimated activation memory of one batch of `tokens` tokens without checkpointing."""
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    intermediate = int(getattr(model_config, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    per_token = layers * (_HIDDEN_FACTOR * hidden + _INTERMEDIATE_FACTOR * intermediate) * dtype_bytes
    return per_token * tokens


def free_memory_bytes(device: str) -> int:
    """Free memory where the activations live: the GPU's, or the machine's available RAM."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def wants_checkpointing(setting: bool | str, model_config: Any, batch_tokens: int, device: str,
                        dtype_bytes: int) -> bool:
    """True/False as asked; "auto": only when the largest batch's activations exceed half the free memory."""
    if setting != "auto":
        return bool(setting)
    need, free = activation_bytes(model_config, batch_tokens, dtype_bytes), free_memory_bytes(device)
    checkpoint = need > _MEMORY_SHARE * free
    log.info("sft: a %d-token batch needs ~%.1f GB of activations, %.1f GB free: gradient checkpointing %s",
             batch_tokens, need / 1e9, free / 1e9, "on" if checkpoint else "off")
    return checkpoint


def autocast_dtype(setting: str, device: str, parameter_dtype: Any) -> Any:
    """The dtype a step autocasts its matmuls to, or None. "auto": bf16 on a CPU with native bf16 when the weights
    are fp32 (on CUDA the base is bf16 or NF4 with bf16 compute already); "bf16" always; "none" never."""
    import torch

    if setting == "none":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device == "cpu" and parameter_dtype == torch.float32:
        native, why = cpu_bf16()
        log.info("sft: %s: %s", why, "bf16 autocast" if native else "fp32")
        return torch.bfloat16 if native else None
    return None


def keep_lora_sums_fp32(model: Any) -> int:
    """Under autocast every linear layer returns bf16, and peft adds the LoRA branch to its base layer's output in
    that dtype: a delta much smaller than the output (every delta early in a run) falls below bf16's rounding and
    is lost from the forward pass. Each LoRA layer's frozen base returns fp32 instead, so the sum is fp32 while both
    matmuls still run in bf16. Returns the number of layers hooked."""
    from peft.tuners.lora import LoraLayer

    hooked = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.get_base_layer().register_forward_hook(_output_fp32)
            hooked += 1
    return hooked


def _output_fp32(module: Any, inputs: Any, output: Any) -> Any:
    """Only under autocast: a copy decoded without it (validation, inference) keeps its layers' own dtype."""
    import torch

    autocasting = isinstance(output, torch.Tensor) and torch.is_autocast_enabled(output.device.type)
    return output.float() if autocasting and output.is_floating_point() else output


def autocast(device: str, dtype: Any) -> contextlib.AbstractContextManager:
    """torch.autocast over one forward pass, or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device, dtype=dtype)
