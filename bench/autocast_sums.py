"""What bf16 autocast does to SFT: tokens/s, and the trained adapter's validation loss measured in fp32.

    .venv/bin/python bench/autocast_sums.py [--steps 12] [--sessions 160] [fp32 bf16+fp32sums bf16]

Trains SmolLM2-135M LoRA (the main job's settings: r 8, lr 3e-4, 2,048-token batches, 10% warm-up) for the same
steps on the first `--sessions` Electronic training sessions (raw SFT examples), along three paths: fp32; bf16
autocast with each LoRA layer's sum in fp32 (`SFTConfig.fp32_lora_sums`, the default); bf16 autocast with peft's
bf16 sum. Each adapter is then loaded as inference applies it (fp32, merged) and its answer loss measured without
autocast on 30 validation sessions, so the figures compare what was learned, not the rounding of the training
forward. Prints the CPU's bf16 support and one JSON line per path. Nothing else should run on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402

from kd_bundle.config import DataConfig, settings  # noqa: E402
from kd_bundle.data.sessions import load_sessions  # noqa: E402
from kd_bundle.student.batches import bucket_batches, collate, completion_loss, tokenize  # noqa: E402
from kd_bundle.student.icl import ICLConfig, build_sft_examples  # noqa: E402
from kd_bundle.student.model import StudentConfig, cpu_bf16, load_student, load_tokenizer  # noqa: E402
from kd_bundle.student.training import SFTConfig, train_student  # noqa: E402
from kd_bundle.student.validation import validation_loss, validation_sessions  # noqa: E402

PATHS = {"fp32": ("none", True), "bf16+fp32sums": ("bf16", True), "bf16": ("bf16", False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=list(PATHS), help=f"any of {list(PATHS)} (default: all)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sessions", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s) {unknown}; known: {list(PATHS)}")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}; {cpu_bf16()[1]}; {args.threads} threads")
    student = StudentConfig()
    tokenizer = load_tokenizer(student)
    frame = load_sessions(DataConfig(domain="electronic"), settings().data_root)
    train = frame.filter(pl.col("split") == "train").sort("session_id").head(args.sessions)
    examples = build_sft_examples(train, None, None, tokenizer, ICLConfig(formats=()), 2048)
    valid = build_sft_examples(validation_sessions(frame, 30, 0), None, None, tokenizer, ICLConfig(formats=()), 2048,
                               split="valid")
    rows = tokenize(valid, tokenizer, 2048)
    batches = bucket_batches([len(ids) for ids, _ in rows], 2048, 16)
    to_batch = lambda b: collate(b, pad_id=tokenizer.pad_token_id, device="cpu")  # noqa: E731
    for label in args.paths:
        autocast, sums = PATHS[label]
        sft = SFTConfig(max_steps=args.steps, warmup_ratio=0.1, valid_sessions=0, quantization="none",
                        autocast=autocast, fp32_lora_sums=sums, batch_tokens=2048, max_batch_size=16,
                        learning_rate=3e-4, lora_r=8, lora_alpha=16)
        with tempfile.TemporaryDirectory(prefix="kd-autocast-") as tmp:
            result = train_student(examples, student, sft, Path(tmp) / "adapter")
            model, _ = load_student(student.model_copy(update={"dtype": "float32"}), Path(tmp) / "adapter")
            loss = validation_loss(model, rows, batches, to_batch, completion_loss)
        rate = sum(result.step_tokens[1:]) / sum(result.step_seconds[1:])
        print(json.dumps({"path": label, "steps": result.steps, "tokens_per_second": round(rate, 1),
                          "train_loss_first_last": [result.losses[0], result.losses[-1]],
                          "valid_loss_fp32": round(loss, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
