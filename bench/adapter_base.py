"""Which base should an adapter meet at inference: the one it was trained against, or another?

    .venv/bin/python bench/adapter_base.py                      # SmolLM2-135M, 8 real sessions, 6 steps (~6 min)
    .venv/bin/python bench/adapter_base.py --shape tiny         # the --llama8b code path at Llama-3.1-8B's tiny shape

Trains one QLoRA adapter (NF4 base) and one plain LoRA adapter (fp32 base) on the same real Electronic training
sessions, then measures, on those sessions' training examples, the answer loss each adapter gets under each base:
the base it was trained against, and the other one (NF4-trained merged into fp32, as inference did before issue 19;
fp32-trained on an NF4 base). A loss that rises when the base changes is what the student loses at inference for
nothing. Also prints the decode time per session under each base. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from kd_bundle.config import DataConfig, settings  # noqa: E402
from kd_bundle.data.sessions import load_sessions  # noqa: E402
from kd_bundle.student.batches import collate as _collate  # noqa: E402
from kd_bundle.student.batches import completion_loss  # noqa: E402
from kd_bundle.student.batches import tokenize as _tokenize  # noqa: E402
from kd_bundle.student.generate import predict_sessions  # noqa: E402
from kd_bundle.student.icl import ICLConfig, build_sft_examples  # noqa: E402
from kd_bundle.student.model import StudentConfig, load_base, load_tokenizer  # noqa: E402
from kd_bundle.student.training import SFTConfig, train_adapter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    frame = load_sessions(DataConfig(domain="electronic"), settings().data_root)
    sessions = (frame.filter((pl.col("split") == "train") & pl.col("item_ids").list.len().is_between(4, 7))
                .sort("session_id").head(args.sessions))
    with tempfile.TemporaryDirectory(prefix="kd-adapter-base-") as tmp:
        student = StudentConfig(model=_tiny_llama8b(Path(tmp)) if args.shape == "tiny" else args.model,
                                dtype="float32", batch_size=4, max_new_tokens=96)
        tokenizer = load_tokenizer(student)
        examples = build_sft_examples(sessions, None, None, tokenizer, ICLConfig(formats=()), 2048)
        report = {}
        for trained in ("nf4", "none"):
            sft = SFTConfig(max_steps=args.steps, warmup_ratio=0.1, valid_sessions=0, learning_rate=args.lr,
                            quantization=trained, gradient_checkpointing=False, autocast="none", batch_tokens=8192,
                            max_batch_size=args.sessions)
            result = train_adapter(sessions, None, None, student, sft, Path(tmp) / trained)
            for base in ("nf4", "fp32"):
                loss = _answer_loss(student, Path(tmp) / trained, base == "nf4", examples, tokenizer)
                started = time.perf_counter()
                cfg = student.model_copy(update={"load_in_4bit": base == "nf4"})
                predict_sessions(sessions.with_columns(split=pl.lit("test")), None, cfg, ICLConfig(formats=()),
                                 Path(tmp) / trained)
                seconds = (time.perf_counter() - started) / sessions.height
                report[f"trained {trained} ({'4-bit' if result.quantized else 'fp32'}) -> base {base}"] = {
                    "answer_loss": round(loss, 4), "last_train_loss": result.losses[-1],
                    "decode_s_per_session": round(seconds, 3)}
        print(json.dumps({"shape": args.shape, "model": student.model if args.shape != "tiny" else "tiny-llama8b",
                          "sessions": args.sessions, "steps": args.steps, "results": report}, indent=1))
    return 0


def _answer_loss(student: StudentConfig, adapter: Path, four_bit: bool, examples: pl.DataFrame, tokenizer) -> float:
    """Mean answer loss of the adapter on its own training examples, on an NF4 or an fp32 base (merged)."""
    import torch
    from peft import PeftModel

    model, quantized = load_base(student, quantize=four_bit)
    model = PeftModel.from_pretrained(model, str(adapter))
    if not quantized:
        model = model.merge_and_unload()
    model.eval()
    rows = _tokenize(examples, tokenizer, 2048)
    with torch.inference_mode():
        losses = [float(completion_loss(model, _collate([row], tokenizer.pad_token_id, "cpu"))) for row in rows]
    return sum(losses) / len(losses)


def _tiny_llama8b(folder: Path) -> str:
    """Llama-3.1-8B's architecture at a tiny width with SmolLM2's tokenizer (bench/student_bench.py's --shape tiny)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bench.student_bench import TINY_SHAPE
    from kd_bundle.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path("smollm2")))
    LlamaForCausalLM(LlamaConfig(**TINY_SHAPE, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(folder / "tiny")
    tokenizer.save_pretrained(folder / "tiny")
    return str(folder / "tiny")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--shape", choices=("real", "tiny"), default="real")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-3)
    return parser


if __name__ == "__main__":
    sys.exit(main())
