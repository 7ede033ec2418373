"""Learning curve of the student on the main job's 60 Electronic test sessions: raw SFT trained on more and more
training sessions, and raw ICL retrieving from larger and larger pools, against the zero-shot student and the
positional references, with what the student writes beside each row.

    .venv/bin/python bench/learning_curve.py                        # SFT on 40 / 160 / all, ICL pools 4 / 160 / all
    .venv/bin/python bench/learning_curve.py --sft 40 --icl 4       # a quick look
    .venv/bin/python bench/learning_curve.py --select-by loss       # the kept step by answer loss alone

Every pool is a seeded random sample of the training split (seed 0; "all" = the whole split). Adapters train as the
main job's do (plain LoRA r 8, one epoch, lr 3e-4, 2,048-token batches, validated every 5 steps on 30 validation
sessions, the best step kept: by the strict precision of the decoded validation answers, or with --select-by loss
by the answer loss). Prints one JSON line per row: strict precision / recall / coverage, paired 95%
bootstrap verdicts ('+', '=', '-') of strict precision against the zero-shot student and the best positional
reference, training tokens/s and steps, wall time; and the answers' shape: bundles per answer, products per bundle,
and the share of answers that are one bundle of the session's first k products (a positional habit: "first-two" is
k = 2, "whole-session" is k = n). Takes ~40 min on 2 cores with the defaults.
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

from kd_bundle.config import DataConfig, settings  # noqa: E402
from kd_bundle.data.sessions import load_sessions  # noqa: E402
from kd_bundle.evaluation import metrics  # noqa: E402
from kd_bundle.evaluation.baselines import POSITIONAL_METHODS, positional_predictions  # noqa: E402
from kd_bundle.knowledge.pools import sample_training  # noqa: E402
from kd_bundle.knowledge.sampling import SamplingConfig  # noqa: E402
from kd_bundle.report import bootstrap  # noqa: E402
from kd_bundle.student.generate import predict_sessions  # noqa: E402
from kd_bundle.student.icl import ICLConfig  # noqa: E402
from kd_bundle.student.model import StudentConfig  # noqa: E402
from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge  # noqa: E402
from kd_bundle.student.training import SFTConfig, train_adapter  # noqa: E402

STUDENT = StudentConfig(max_new_tokens=96, batch_size=4)  # the main job's student
SFT = SFTConfig(epochs=1.0, learning_rate=3e-4, lora_r=8, lora_alpha=16, batch_tokens=2048, max_batch_size=16,
                valid_sessions=30, eval_every=5, patience=2)
ZERO_SHOT, RAW = ICLConfig(formats=()), ICLConfig(formats=("raw",), demonstrations=1)


def pool(sessions: pl.DataFrame, size: str) -> pl.DataFrame:
    if size == "all":
        return sessions
    return sample_training(sessions, SamplingConfig(strategy="random", size=int(size), seed=0))


def shape(predictions: pl.DataFrame, sessions: pl.DataFrame) -> dict[str, float]:
    """Bundles per answer, products per bundle, share of answers that are one prefix bundle of the session."""
    items = dict(zip(sessions["session_id"].to_list(), sessions["item_ids"].to_list()))
    answers = [(sid, b) for sid, b in predictions.select("session_id", "bundles").iter_rows() if b]
    bundles = [bundle for _, b in answers for bundle in b]
    prefix = sum(len(b) == 1 and b[0] == items[sid][: len(b[0])] for sid, b in answers)
    return {"bundles_per_answer": round(len(bundles) / max(len(answers), 1), 2),
            "products_per_bundle": round(sum(map(len, bundles)) / max(len(bundles), 1), 2),
            "prefix_share": round(prefix / max(len(answers), 1), 3)}


def scored(predictions: pl.DataFrame, test: pl.DataFrame):
    per_session = metrics.session_scores(predictions, test)
    arrays = bootstrap.session_arrays([metrics.session_lists(per_session)])
    return metrics.summarise_scores(per_session), arrays


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sessions = load_sessions(DataConfig(domain="electronic", max_test_sessions=60), settings().data_root)
    test = sessions.filter(pl.col("split") == "test")
    print(json.dumps({"train": sessions.filter(pl.col("split") == "train").height, "test": test.height,
                      "valid": sessions.filter(pl.col("split") == "valid").height}))
    started = time.perf_counter()
    zero = predict_sessions(sessions, None, STUDENT, ZERO_SHOT)
    zero_scores, zero_arrays = scored(zero, test)
    references = {m: scored(positional_predictions(test, m), test) for m in POSITIONAL_METHODS}
    best = max(references, key=lambda m: references[m][0]["strict_precision"])
    _print("zero-shot", "-", zero_scores, None, None, shape(zero, sessions), time.perf_counter() - started)
    for method, (scores, _) in references.items():
        _print(method, "-", scores, None, None, {}, 0.0)

    def row(label: str, size: str, predictions: pl.DataFrame, seconds: float, train: dict | None = None) -> None:
        scores, arrays = scored(predictions, test)
        verdicts = {"vs_zero_shot": bootstrap.verdict(bootstrap.paired_difference(arrays, zero_arrays),
                                                       "strict_precision"),
                    f"vs_{best}": bootstrap.verdict(bootstrap.paired_difference(arrays, references[best][1]),
                                                    "strict_precision")}
        _print(label, size, scores, verdicts, train, shape(predictions, sessions), seconds)

    for size in args.icl.split(","):
        started = time.perf_counter()
        pooled = pool(sessions, size)
        vectors = embed_sessions(pooled, RetrievalConfig())
        retrieved = retrieve_knowledge(pooled, vectors, build_index(vectors, pooled), {"raw": pooled},
                                       RetrievalConfig())
        row("raw icl", size, predict_sessions(pooled, retrieved, STUDENT, RAW), time.perf_counter() - started)
    for size in args.sft.split(","):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="kd-curve-") as tmp:
            result = train_adapter(pool(sessions, size), None, None, STUDENT,
                                   SFT.model_copy(update={"select_by": args.select_by}), Path(tmp) / "adapter")
            predictions = predict_sessions(sessions, None, STUDENT, ZERO_SHOT, result.adapter_dir)
        train = {"examples": result.examples, "steps": result.steps, "best_step": result.best_step,
                 "tokens_per_second": round(result.tokens_per_second, 1), "train_seconds": round(result.seconds),
                 "valid_losses": result.valid_losses, "valid_precisions": result.valid_precisions}
        row("raw sft", size, predictions, time.perf_counter() - started, train)
    return 0


def _print(label: str, size: str, scores: dict, verdicts: dict | None, train: dict | None, written: dict,
           seconds: float) -> None:
    print(json.dumps({"row": label, "pool": size, **{m: round(scores[m], 3) for m in
                      ("strict_precision", "strict_recall", "strict_coverage")},
                      "n": f"{scores['n_scored']}/{scores['n_sessions']}", **(verdicts or {}), **(train or {}),
                      **written, "wall_s": round(seconds)}), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", default="40,160,all", help="training-session counts of the raw SFT adapters")
    parser.add_argument("--icl", default="4,160,all", help="pool sizes of raw ICL")
    parser.add_argument("--select-by", default="strict_precision", choices=["strict_precision", "loss"],
                        help="what keeps an adapter's step on the validation sessions (SFTConfig.select_by)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
