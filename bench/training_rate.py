"""SFT training rate on this CPU against its bound, for the compute paths training can take.

    .venv/bin/python bench/training_rate.py [--sessions 48] [--steps 6] [--threads 2]

Prints the CPU's flags, this machine's own matmul rate (GFLOP/s of SmolLM2's MLP shape, 1,024 tokens x 576 ->
1,536, in fp32 and bf16, best of 5), then for each path (fp32; fp32 with gradient checkpointing; bf16 autocast where
the CPU has native bf16) the real training tokens/s of SmolLM2-135M LoRA (r 16, all linear layers) on real Electronic
training sessions (raw SFT examples in 1,024-token batches, first step excluded), the peak RSS, and the share of the
bound: a LoRA step costs ~4·N FLOPs per token (forward 2·N, backward through the frozen base 2·N for the input
gradients; the LoRA weights' own gradients are negligible), N = the decoder layers' linear weights (the LM head
runs on the answer columns only), so share = 4·N·tokens/s / matmul rate of the path's dtype. Checkpointing adds one
forward (6·N); its share is printed against 4·N, i.e. what the user gets. Nothing else should run on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402

from kd_bundle.config import DataConfig, settings  # noqa: E402
from kd_bundle.data.sessions import load_sessions  # noqa: E402
from kd_bundle.student.icl import ICLConfig, build_sft_examples  # noqa: E402
from kd_bundle.student.model import StudentConfig, cpu_bf16, load_base, load_tokenizer  # noqa: E402
from kd_bundle.student.training import SFTConfig, train_student  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return []
    return sorted(set(flags) & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})


def matmul_gflops(dtype: torch.dtype, tokens: int = 1024, reps: int = 5) -> float:
    x = torch.randn(tokens, 576, dtype=dtype)
    w = torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)  # warm-up: kernel selection
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        for _ in range(10):
            torch.nn.functional.linear(x, w)
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * tokens * 576 * 1536 / best / 1e9


def decoder_linear_parameters(student: StudentConfig) -> int:
    model, _ = load_base(student, quantize=False, training=True)
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    native, why = cpu_bf16()
    rates = {"float32": matmul_gflops(torch.float32), "bfloat16": matmul_gflops(torch.bfloat16)}
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, flags {cpu_flags()}, {args.threads} threads; {why}")
    print(f"matmul 1024x576x1536: fp32 {rates['float32']:.0f} GFLOP/s, bf16 {rates['bfloat16']:.0f} GFLOP/s")
    student = StudentConfig(model=args.model)
    n = decoder_linear_parameters(student)
    frame = load_sessions(DataConfig(domain="electronic"), settings().data_root)
    sessions = frame.filter(pl.col("split") == "train").sort("session_id").head(args.sessions)
    examples = build_sft_examples(sessions, None, None, load_tokenizer(student), ICLConfig(formats=()), 2048)
    paths = [("fp32", False, "none", "float32")] * ("fp32" in args.paths)
    paths += [("fp32 + checkpointing", True, "none", "float32")] * ("ckpt" in args.paths)
    if (native or args.force_bf16) and "bf16" in args.paths:
        paths.append(("bf16 autocast", False, "bf16", "bfloat16"))
    for label, checkpointing, autocast, dtype in paths:
        sft = SFTConfig(max_steps=args.steps, warmup_ratio=0.0, valid_sessions=0, quantization="none",
                        gradient_checkpointing=checkpointing, autocast=autocast, batch_tokens=args.batch_tokens,
                        max_batch_size=64, lora_dropout=args.lora_dropout)
        with tempfile.TemporaryDirectory(prefix="kd-rate-") as tmp:
            result = train_student(examples, student, sft, Path(tmp) / "adapter")
        tokens, seconds = sum(result.step_tokens[1:]), sum(result.step_seconds[1:])
        rate = tokens / seconds
        share = 4 * n * rate / (rates[dtype] * 1e9)
        print(json.dumps({"path": label, "batch_tokens": args.batch_tokens, "lora_dropout": args.lora_dropout,
                          "tokens_per_second": round(rate, 1), "share_of_bound": round(share, 3),
                          "bound_tokens_per_second": round(rates[dtype] * 1e9 / (4 * n), 1),
                          "decoder_linear_params": n, "steps": result.steps, "tokens": tokens,
                          "peak_rss_gb": round(result.peak_memory_bytes / 1e9, 2),
                          "loss_first_last": [result.losses[0], result.losses[-1]]}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sessions", type=int, default=48, help="real Electronic training sessions")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="SFTConfig.batch_tokens")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="SFTConfig.lora_dropout")
    parser.add_argument("--paths", default="fp32,ckpt,bf16", help="which of fp32, ckpt, bf16 to time")
    parser.add_argument("--force-bf16", action="store_true", help="time bf16 autocast even without native bf16")
    return parser


if __name__ == "__main__":
    sys.exit(main())
