"""Student cost and quality on this machine: ICL, SFT and SFT+ICL on a real domain slice, and the teacher beside them.

    .venv/bin/python bench/student_bench.py                                  # SmolLM2, 60 train / 9 test, CPU
    .venv/bin/python bench/student_bench.py --teacher-embedded                # + llm-katan serving the same model
    .venv/bin/python bench/student_bench.py --teacher-base-url URL --teacher-model NAME  # + any OpenAI endpoint
    .venv/bin/python bench/student_bench.py --llama8b                        # GPU: Llama-3.1-8B-shaped, 4-bit QLoRA
    .venv/bin/python bench/student_bench.py --decoding-compare               # grammar vs free, 60 test sessions

Prints training tokens/s (real tokens, padding excluded, first step excluded), inference sessions/s and new
tokens/s (model load excluded), peak memory, the padding share of the training batches, and the three methods'
scores; writes predictions (Parquet + JSON Lines for `python -m kd_bundle score`) and results rows to --out.
--decoding-compare instead measures parse rate, strict precision/recall and sessions/s of zero-shot, ICL (and SFT
with --steps > 0) under grammar and free decoding on the same length-stratified test sessions. The --llama8b path builds a random-weight model from Llama-3.1-8B's config (nothing is downloaded) and runs the
same training and generation code on synthetic sessions of realistic length. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from kd_bundle.student.icl import ICLConfig, build_prompts, knowledge_sections, user_message  # noqa: E402
from kd_bundle.student.model import StudentConfig, context_window, load_student, peak_memory_bytes
from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge  # noqa: E402
from kd_bundle.student.training import (
    SFTConfig,  # noqa: E402
    train_adapter,  # noqa: E402
)

log = logging.getLogger("bench")

# meta-llama/Llama-3.1-8B-Instruct config.json, the fields that shape compute and memory.
LLAMA31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY_SHAPE = dict(LLAMA31_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.test_sessions is None:
        args.test_sessions = 60 if args.decoding_compare else 9
    if args.decoding_compare:
        return _decoding_compare(args)
    sessions = _synthetic_sessions(args) if args.llama8b else _real_sessions(args)
    student = StudentConfig(model=_llama8b_folder(args) if args.llama8b else args.model,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    batch_tokens = args.batch_tokens or (4096 if args.llama8b else 1024)  # 8B: the reference's 8 x 512
    sft = SFTConfig(max_steps=args.steps, warmup_ratio=0.1, valid_sessions=0, batch_tokens=batch_tokens,
                    quantization="none" if args.no_4bit else "nf4")
    retrieved = _retrieve(sessions, args)
    icl = ICLConfig(formats=tuple(args.icl_formats.split(",")) if args.icl_formats else (), demonstrations=args.k,
                    prefill=args.prefill)

    report: dict[str, dict] = {}
    icl_predictions, report["icl"] = _timed_predict(sessions, retrieved, student, icl, None)
    train = train_adapter(sessions, retrieved, None, student, sft, args.out / "adapter")
    steady = train.step_seconds[1:] or train.step_seconds
    per_step_tokens = train.train_tokens / train.steps
    report["sft-train"] = {
        "steps": train.steps, "examples": train.examples, "4bit": train.quantized,
        "train_tokens_per_s": round(per_step_tokens * len(steady) / sum(steady), 1),
        "padding_share": round(1 - train.train_tokens / train.padded_tokens, 4),
        "s_per_step": round(sum(steady) / len(steady), 3), "peak_memory_gb": round(train.peak_memory_bytes / 1e9, 2),
        "loss_first_last": [train.losses[0], train.losses[-1]],
    }
    sft_predictions, report["sft"] = _timed_predict(sessions, retrieved, student, ICLConfig(formats=()), train.adapter_dir)
    both_predictions, report["sft+icl"] = _timed_predict(sessions, retrieved, student, icl, train.adapter_dir)
    if args.llama8b:  # the reference: `generate` at batch 1
        batch_1 = student.model_copy(update={"batch_size": 1})
        _, report["batch-1"] = _timed_predict(sessions, retrieved, batch_1, ICLConfig(formats=()), None, limit=4)
    else:
        results = _score_all(sessions, {"icl": icl_predictions, "sft": sft_predictions, "sft+icl": both_predictions},
                             args, report)
        print(results.select("utilization", "knowledge_format", "precision", "recall", "coverage",
                             "strict_precision", "n_scored", "n_failed"))
    if args.teacher_embedded:  # llm-katan serving the same SmolLM2 (transformers backend), started here and stopped
        from kd_bundle.teacher.server import start_server, stop_server

        server = start_server(args.teacher_model, model=args.model, host="127.0.0.1", port=args.teacher_port)
        try:
            args.teacher_base_url = server.base_url
            report["teacher"] = _teacher_throughput(sessions, retrieved, icl, args)
        finally:
            stop_server(args.teacher_port)
    elif args.teacher_base_url:
        report["teacher"] = _teacher_throughput(sessions, retrieved, icl, args)
    print(json.dumps(report, indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


def _decoding_compare(args) -> int:
    """Zero-shot, ICL (and SFT when --steps > 0) under grammar and free decoding, on the same test sessions."""
    from kd_bundle.evaluation.metrics import score_predictions
    from kd_bundle.student.model import cpu_bf16

    sessions = _real_sessions(args)
    student = StudentConfig(model=args.model, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    retrieved = _retrieve(sessions, args)
    prefill = {"prefill": args.prefill}
    setups = {"zero-shot": (ICLConfig(formats=(), **prefill), None),
              "icl": (ICLConfig(formats=("raw",), demonstrations=args.k, **prefill), None)}
    if args.steps:
        sft = SFTConfig(max_steps=args.steps, warmup_ratio=0.1, valid_sessions=0, batch_tokens=args.batch_tokens or 1024,
                        quantization="none" if args.no_4bit else "nf4")
        adapter = train_adapter(sessions, retrieved, None, student, sft, args.out / "adapter").adapter_dir
        setups["sft"] = (ICLConfig(formats=(), **prefill), adapter)
    test = sessions.filter(pl.col("split") == "test")
    report: dict[str, dict] = {"cpu_bf16": cpu_bf16()[1], "threads": _threads()}
    for name, (icl, adapter) in setups.items():
        for decoding in args.decodings.split(","):
            cfg = student.model_copy(update={"decoding": decoding})
            predictions, figures = _timed_predict(sessions, retrieved, cfg, icl, adapter)
            scores = score_predictions(predictions, test)
            figures.update(
                parse_rate=round(figures["parsed"] / figures["sessions"], 3),
                strict_precision=round(scores["strict_precision"], 4), strict_recall=round(scores["strict_recall"], 4),
                mean_new_tokens=round(predictions["new_tokens"].mean(), 1),
            )
            report[f"{name}/{decoding}"] = figures
            predictions.write_parquet(args.out / f"predictions_{name}_{decoding}.parquet")
            log.info("%s/%s: %s", name, decoding, figures)
    print(json.dumps(report, indent=1))
    (args.out / "decoding_report.json").write_text(json.dumps(report, indent=1))
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _timed_predict(sessions, retrieved, student, icl, adapter, limit: int | None = None):
    from kd_bundle.student.generate import predict_bundles

    targets = sessions.filter(pl.col("split") == "test")
    targets = targets.head(limit) if limit else targets
    model, tokenizer = load_student(student, adapter)
    prompts = build_prompts(targets, retrieved, tokenizer, icl, context_window(model, student) - student.max_new_tokens)
    _reset_cuda_peak()
    started = time.perf_counter()
    predictions = predict_bundles(targets, prompts, model, tokenizer, student)
    seconds = time.perf_counter() - started
    new_tokens = int(predictions["new_tokens"].sum())  # tokens generated, prefill excluded
    return predictions, {
        "sessions": targets.height, "seconds": round(seconds, 2), "sessions_per_s": round(targets.height / seconds, 3),
        "new_tokens_per_s": round(new_tokens / seconds, 1), "mean_prompt_tokens": round(prompts["prompt_tokens"].mean(), 1),
        "batch_size": student.batch_size, "peak_memory_gb": round(peak_memory_bytes() / 1e9, 2),
        "parsed": int(predictions["bundles"].is_not_null().sum()), "decoding": student.decoding,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def _score_all(sessions, predictions: dict[str, pl.DataFrame], args, report) -> pl.DataFrame:
    from kd_bundle.evaluation.metrics import score_predictions
    from kd_bundle.evaluation.predictions import write_predictions_jsonl
    from kd_bundle.evaluation.results import combine_results, result_row

    test = sessions.filter(pl.col("split") == "test")
    rows = []
    for utilization, frame in predictions.items():
        scores = score_predictions(frame, test)
        name = utilization.replace("+", "_")
        frame.write_parquet(args.out / f"predictions_{name}.parquet")
        write_predictions_jsonl(frame, args.out / f"predictions_{name}.jsonl")
        fmt = "none" if utilization == "sft" else (args.icl_formats or "none").replace(",", "+")
        rows.append(result_row(domain=args.domain, rq="rq3", method="student", knowledge_format=fmt,
                               utilization=utilization, model=args.model, wall_seconds=report[utilization]["seconds"],
                               **scores))
    results = combine_results(rows)
    results.write_parquet(args.out / "results.parquet")
    return results


def _teacher_throughput(sessions, retrieved, icl, args) -> dict:
    """The same ICL requests at the endpoint, `--teacher-concurrency` at a time (no request cache: real cost)."""
    from openai import OpenAI

    client = OpenAI(base_url=args.teacher_base_url, api_key=os.environ.get("KD_TEACHER_API_KEY", "local"))
    knowledge = knowledge_sections(retrieved, icl.formats)
    targets = sessions.filter(pl.col("split") == "test")
    messages = [[{"role": "user", "content": user_message(t, knowledge.get(sid, []), icl.demonstrations, icl.max_lines)}]
                for sid, t in targets.select("session_id", "titles").iter_rows()]

    def ask(message):
        response = client.chat.completions.create(model=args.teacher_model, messages=message,
                                                  max_tokens=args.max_new_tokens, temperature=0.0)
        return response.usage.completion_tokens if response.usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(args.teacher_concurrency) as pool:
        tokens = list(pool.map(ask, messages))
    seconds = time.perf_counter() - started
    return {"sessions": len(messages), "seconds": round(seconds, 2), "sessions_per_s": round(len(messages) / seconds, 3),
            "new_tokens_per_s": round(sum(tokens) / seconds, 1), "concurrency": args.teacher_concurrency,
            "endpoint": args.teacher_base_url, "model": args.teacher_model}


def _real_sessions(args) -> pl.DataFrame:
    from kd_bundle.config import DataConfig, settings
    from kd_bundle.data.sessions import load_sessions

    data = DataConfig(domain=args.domain, max_train_sessions=args.train_sessions, max_test_sessions=args.test_sessions)
    sessions = load_sessions(data, settings().data_root)
    return sessions.filter(pl.col("split") != "valid")


def _synthetic_sessions(args) -> pl.DataFrame:
    """Sessions of 2-10 products with Amazon-like titles (~15 words), for machines without the data."""
    rng = random.Random(0)
    words = ("wireless bluetooth headphones noise cancelling black stainless steel kitchen knife set cotton shirt men "
             "women running shoes organic green tea leaves usb charger cable fast charging case cover screen protector "
             "tempered glass camera lens tripod mount portable speaker waterproof").split()
    rows = []
    for sid in range(1, args.train_sessions + args.test_sessions + 1):
        n = 2 + sid % 9
        items = [f"S{sid}I{i}" for i in range(n)]
        rows.append({"session_id": sid, "split": "train" if sid <= args.train_sessions else "test", "item_ids": items,
                     "titles": [" ".join(rng.choices(words, k=15)) for _ in items], "categories": [None] * n,
                     "bundles": [items[:2], items[1:3]] if n > 2 else [items], "intents": ["a", "b"][: 2 if n > 2 else 1]})
    return pl.DataFrame(rows)


def _retrieve(sessions: pl.DataFrame, args) -> pl.DataFrame:
    cfg = RetrievalConfig(method=args.retrieval, k=max(args.k, 1))
    embeddings = embed_sessions(sessions, cfg)
    return retrieve_knowledge(sessions, embeddings, build_index(embeddings, sessions), {"raw": sessions}, cfg)


def _llama8b_folder(args) -> str:
    """A random-weight Llama-3.1-8B-shaped model (bf16) saved once under --out, with a chat-capable tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = args.out / ("llama31-8b-random" if args.shape == "8b" else "llama-tiny-random")
    if (folder / "config.json").exists():
        return str(folder)
    if args.shape == "8b" and not torch.cuda.is_available():
        raise SystemExit("--llama8b needs a CUDA GPU (use --shape tiny to try the code path on CPU)")
    from kd_bundle.models import resolve_model_path

    # SmolLM2's tokenizer (49k ids < 128k, has a chat template); on a GPU machine carry its folder and pass it.
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(resolve_model_path("smollm2")))
    shape = LLAMA31_8B if args.shape == "8b" else TINY_SHAPE
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return str(folder)


def _reset_cuda_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/student_bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--domain", default="electronic", choices=["electronic", "clothing", "food"])
    parser.add_argument("--model", default="smollm2", help="student: smollm2, a cached HF name or a folder")
    parser.add_argument("--train-sessions", type=int, default=60)
    parser.add_argument("--test-sessions", type=int, default=None,
                        help="stratified by length, as the AICL split (default 9; 60 with --decoding-compare)")
    parser.add_argument("--steps", type=int, default=8, help="SFT optimizer steps")
    parser.add_argument("--batch-tokens", type=int, default=None, help="SFT token budget per batch (1024; 8B: 4096)")
    parser.add_argument("--batch-size", type=int, default=4, help="generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=2, help="ICL demonstrations")
    parser.add_argument("--icl-formats", default="raw", help="comma-separated retrieved formats; '' = zero-shot")
    parser.add_argument("--prefill", default="Bundles:", help="start of the answer ('' = none); the grammar accepts "
                        "any start of an answer it allows")
    parser.add_argument("--decoding-compare", action="store_true",
                        help="grammar vs free decoding: parse rate, strict P/R, sessions/s (zero-shot, ICL, SFT if --steps)")
    parser.add_argument("--decodings", default="grammar,free", help="with --decoding-compare: which decodings")
    parser.add_argument("--retrieval", default="auto", choices=["auto", "minilm", "tfidf"])
    parser.add_argument("--no-4bit", action="store_true", help="plain LoRA instead of QLoRA")
    parser.add_argument("--teacher-base-url", default=None, help="OpenAI-compatible endpoint to compare")
    parser.add_argument("--teacher-model", default="smollm2")
    parser.add_argument("--teacher-embedded", action="store_true", help="start llm-katan on --model for the comparison")
    parser.add_argument("--teacher-port", type=int, default=8799)
    parser.add_argument("--teacher-concurrency", type=int, default=8)
    parser.add_argument("--llama8b", action="store_true", help="GPU path: random Llama-3.1-8B-shaped student")
    parser.add_argument("--shape", default="8b", choices=["8b", "tiny"], help="with --llama8b: tiny = CPU code check")
    parser.add_argument("--tokenizer", default=None, help="with --llama8b: a folder with a chat-template tokenizer")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path(".kd-cache/bench/student"))
    return parser


if __name__ == "__main__":
    sys.exit(main())
