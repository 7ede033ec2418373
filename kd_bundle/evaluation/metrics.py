"""Bundle-generation metrics: AICL's precision, recall and coverage, plus strict variants (notes/paper.md section 2).

AICL (`utils/metrics.py::compute`), reproduced exactly:
  * generated items are a set; a generated bundle with fewer than 2 distinct items is dropped;
  * a session whose output failed (null), is missing, or has no bundle left is excluded from S;
  * hit(g): some ground-truth bundle t contains g; the first such t in ground-truth order is t(g);
  * precision = mean over S of hits / |G_s|;  recall = mean over S of hits / |T_s| (counts generated
    bundles, so it can exceed 1);  coverage = mean over hit bundles of |g ∩ t(g)| / |t(g)|.

Strict variants average over ALL sessions scored against, a failed session counting 0, so a model cannot
raise its score by failing on hard sessions. Recall and coverage follow SIGIR'22's detection metrics
(BundleRec `test.py`), which look at each ground-truth bundle and are independent of ground-truth order:
  * strict_precision = the AICL per-session precision, 0 for a failed session;
  * strict_recall = distinct ground-truth bundles t that contain some generated bundle, / |T_s| (never above 1);
  * strict_coverage = mean over t in T_s of max |g| / |t| over generated g ⊆ t (0 where none), per session.

A session with no ground-truth bundle is an error: recall divides by |T_s| (AICL would crash there too), and the
real domains have none. Filter such sessions out first (`pl.col("bundles").list.len() > 0`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from kd_bundle.config import DOMAINS, settings
from kd_bundle.data.sessions import SPLITS, load_sessions, split_of
from kd_bundle.data.source import add_data_arguments, data_config
from kd_bundle.evaluation.predictions import check_predictions, read_predictions_jsonl

# Per-session outcome: "missing" (no prediction row), "unparsed" (bundles null), "empty" (no bundle of
# 2+ items), "scored" (in S).
SESSION_SCORE_COLUMNS: dict[str, pl.DataType] = {
    "session_id": pl.Int64,
    "status": pl.String,
    "n_generated": pl.Int64,  # kept generated bundles, |G_s|
    "n_truth": pl.Int64,  # |T_s|
    "n_hits": pl.Int64,  # generated bundles that hit (AICL)
    "coverage_sum": pl.Float64,  # sum over hit bundles of |g ∩ t(g)| / |t(g)|
    "precision": pl.Float64,  # 0 unless scored
    "recall": pl.Float64,  # AICL per-session recall, 0 unless scored
    "strict_recall": pl.Float64,
    "strict_coverage": pl.Float64,
}
SCORE_KEYS = [
    "precision", "recall", "coverage", "strict_precision", "strict_recall", "strict_coverage",
    "n_sessions", "n_scored", "n_failed",
]  # fmt: skip


def score_predictions(predictions: pl.DataFrame, sessions: pl.DataFrame) -> dict[str, float | int]:
    """AICL and strict metrics of `predictions` against every session in `sessions` (keys: SCORE_KEYS).

    The keys match kd_bundle.evaluation.results.RESULT_SCHEMA, so `result_row(**scores, ...)` takes them as they are.
    """
    return summarise_scores(session_scores(predictions, sessions))


def session_scores(predictions: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """One row per session of `sessions` (SESSION_SCORE_COLUMNS); checks the predictions first."""
    if sessions.height == 0:
        raise ValueError("session_scores: no sessions to score against")
    check_predictions(predictions, sessions)
    no_truth = sessions.filter(pl.col("bundles").list.len().fill_null(0) == 0)["session_id"].to_list()
    if no_truth:
        raise ValueError(
            f"session_scores: session(s) {no_truth[:5]} have no ground-truth bundle, so recall is undefined; "
            "filter them out first"
        )
    generated = predictions.select(
        pl.col("session_id").cast(pl.Int64), pl.col("bundles").alias("generated"), has_row=pl.lit(True)
    )
    joined = sessions.select("session_id", "bundles").join(generated, on="session_id", how="left")
    rows = [
        {"session_id": sid, **_score_session(gen if has_row else None, truth, has_row=bool(has_row))}
        for sid, truth, gen, has_row in joined.select("session_id", "bundles", "generated", "has_row").iter_rows()
    ]
    return pl.DataFrame(rows, schema=SESSION_SCORE_COLUMNS)


def summarise_scores(per_session: pl.DataFrame) -> dict[str, float | int]:
    """Aggregate `session_scores` rows into SCORE_KEYS (AICL over S, strict over all rows)."""
    scored = per_session.filter(pl.col("status") == "scored")
    n_hits = int(scored["n_hits"].sum())
    return {
        # An empty S is 0, not AICL's ZeroDivisionError: a run where every output failed scores nothing.
        "precision": _mean(scored["precision"]),
        "recall": _mean(scored["recall"]),
        "coverage": float(scored["coverage_sum"].sum()) / n_hits if n_hits else 0.0,
        "strict_precision": _mean(per_session["precision"]),
        "strict_recall": _mean(per_session["strict_recall"]),
        "strict_coverage": _mean(per_session["strict_coverage"]),
        "n_sessions": per_session.height,
        "n_scored": scored.height,
        "n_failed": per_session.height - scored.height,
    }


def session_lists(per_session: pl.DataFrame) -> dict[str, list]:
    """The per-session values a results row keeps (kd_bundle.evaluation.results SESSION_COLUMNS), so that intervals
    can be bootstrapped from a results table alone: every metric of SCORE_KEYS is recomputable from these lists."""
    return {
        "session_ids": per_session["session_id"].to_list(),
        "session_scored": (per_session["status"] == "scored").to_list(),
        "session_precision": per_session["precision"].to_list(),
        "session_recall": per_session["recall"].to_list(),
        "session_hits": per_session["n_hits"].to_list(),
        "session_coverage_sum": per_session["coverage_sum"].to_list(),
        "session_strict_recall": per_session["strict_recall"].to_list(),
        "session_strict_coverage": per_session["strict_coverage"].to_list(),
    }


def _score_session(generated: list[list[str]] | None, truth: list[list[str]], has_row: bool) -> dict[str, Any]:
    """Per-session counts; `generated` None means the output failed (or there was no prediction row)."""
    kept = [set(g) for g in (generated or []) if len(set(g)) >= 2]
    truth_sets = [set(t) for t in truth]
    if kept:
        status = "scored"
    else:
        status = "missing" if not has_row else "unparsed" if generated is None else "empty"
    n_hits, coverage_sum = _aicl_hits(kept, truth_sets)
    best = [max((len(g) / len(t) for g in kept if g <= t), default=0.0) for t in truth_sets]
    return {
        "status": status,
        "n_generated": len(kept),
        "n_truth": len(truth_sets),
        "n_hits": n_hits,
        "coverage_sum": coverage_sum,
        "precision": n_hits / len(kept) if kept else 0.0,
        "recall": n_hits / len(truth_sets),
        "strict_recall": sum(1 for b in best if b > 0) / len(truth_sets),
        "strict_coverage": sum(best) / len(truth_sets),
    }


def _aicl_hits(kept: list[set[str]], truth_sets: list[set[str]]) -> tuple[int, float]:
    """AICL's loop: each generated bundle hits the FIRST ground-truth bundle containing it, if any."""
    n_hits, coverage_sum = 0, 0.0
    for g in kept:
        for t in truth_sets:
            if g <= t:
                n_hits += 1
                coverage_sum += len(g & t) / len(t)
                break
    return n_hits, coverage_sum


def _mean(values: pl.Series) -> float:
    return float(values.mean()) if values.len() else 0.0  # type: ignore[arg-type]


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle score`: print one JSON object of metrics on stdout; errors go to stderr (exit 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m kd_bundle score",
        description="Score a predictions JSON Lines file against every session of one split of a domain.",
    )
    parser.add_argument("--domain", choices=DOMAINS, help="a shipped domain (or give --data)")
    parser.add_argument("--predictions", required=True, type=Path, help="JSON Lines, one line per session.")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--data-root", type=Path, default=None, help="Default: KD_DATA_ROOT or ../shared/data.")
    add_data_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and bad flags; the dispatcher wants a code
        return int(exc.code or 0)
    if (args.domain is None) == (args.data is None):
        parser.print_usage(sys.stderr)
        print("python -m kd_bundle score: error: give exactly one of --domain and --data", file=sys.stderr)
        return 2
    try:
        data_root = args.data_root if args.data_root is not None else settings().data_root
        data = data_config(args)
        sessions = split_of(load_sessions(data, data_root), args.split)
        predictions = read_predictions_jsonl(args.predictions)
        per_session = session_scores(predictions, sessions)
    except (ValueError, OSError) as exc:
        where = f"{args.data or args.domain} {args.split}, {args.predictions}"
        print(f"python -m kd_bundle score: error ({where}): {exc}", file=sys.stderr)
        return 2
    result = {
        "domain": data.domain,
        "split": args.split,
        **summarise_scores(per_session),
        "n_missing": int((per_session["status"] == "missing").sum()),
    }
    print(json.dumps(result))
    return 0
