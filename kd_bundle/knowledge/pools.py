"""Knowledge pools for the quantity experiments (RQ2): sampled, and pooled across domains.

Teacher knowledge is distilled once per domain from every training session; a sampled pool is then a filter of
those rows, never a second round of teacher calls. A sampled *sessions* frame keeps the test and valid splits and
only the sampled training sessions, so every stage downstream (pattern mining, retrieval, SFT examples) sees
exactly the sampled knowledge. Multi-domain pools give each other domain's sessions disjoint ids.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kd_bundle.config import BaselineConfig, PatternConfig
from kd_bundle.data.sessions import split_of
from kd_bundle.evaluation.baselines import infer_categories, predict_baseline
from kd_bundle.evaluation.metrics import session_scores
from kd_bundle.knowledge.patterns import mine_patterns
from kd_bundle.knowledge.sampling import SamplingConfig, sample_sessions

DIFFICULTY_COLUMNS = ["session_id", "score"]
_DOMAIN_ID_STRIDE = 10_000_000  # other domains' session ids become id + (index + 1) * stride


def sample_training(
    sessions: pl.DataFrame,
    cfg: SamplingConfig,
    embeddings: pl.DataFrame | None = None,
    difficulty: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """`sessions` with its train split cut to the sample; test and valid untouched."""
    train = split_of(sessions, "train")
    vectors = None
    if embeddings is not None:
        aligned = train.select("session_id").join(embeddings, on="session_id", how="left", maintain_order="left")
        if aligned["embedding"].null_count():
            raise ValueError("sample_training: some training sessions have no embedding")
        vectors = np.asarray(aligned["embedding"].to_list(), dtype=np.float32)
    sampled = sample_sessions(train, cfg, embeddings=vectors, difficulty=difficulty)
    return sessions.filter((pl.col("split") != "train") | pl.col("session_id").is_in(sampled["session_id"].implode()))


def select_knowledge(knowledge: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """Rows of a per-session knowledge frame whose session is a training session of `sessions`."""
    if "session_id" not in knowledge.columns:
        raise ValueError(f"select_knowledge: a per-session knowledge frame needs session_id; got {knowledge.columns}")
    train_ids = split_of(sessions, "train")["session_id"].implode()
    return knowledge.filter(pl.col("session_id").is_in(train_ids))


def teacher_difficulty(session_rules: pl.DataFrame) -> pl.DataFrame:
    """Per training session, how wrong the teacher's FIRST answer was (the rule loop's first answer, before any
    self-correction or feedback): `score` = its strict precision (unreadable = 0), lower is harder; the AICL error
    codes of that answer are kept as `error_codes`. The study's difficulty strategy needs this preliminary teacher
    inference; the rule distillation already makes it, so it costs no extra teacher call."""
    missing = [c for c in ("session_id", "first_precision", "first_error_codes") if c not in session_rules.columns]
    if missing:
        raise ValueError(f"teacher_difficulty: session rules lack {missing}; distil them with the current rules.py")
    return session_rules.select(
        "session_id", pl.col("first_precision").alias("score"), pl.col("first_error_codes").alias("error_codes")
    ).sort("session_id")


def pattern_difficulty(sessions: pl.DataFrame, cfg: PatternConfig, folds: int = 5, seed: int = 0) -> pl.DataFrame:
    """The non-LLM proxy: per training session, the pattern baseline's strict precision on it while it is held out.

    Training sessions are split into `folds` seeded folds; each fold is scored with patterns mined from, and item
    categories inferred (from titles) against, the other folds only, so no session is scored by patterns mined from
    its own ground truth. Columns: DIFFICULTY_COLUMNS, lower = harder."""
    train = split_of(sessions, "train")
    if train.height < 2:
        raise ValueError(f"pattern_difficulty: needs 2+ training sessions to hold any out; got {train.height}")
    fold = np.random.default_rng(seed).permutation(train.height) % min(folds, train.height)
    frames = []
    for held_out in np.unique(fold):
        target, rest = train.filter(pl.Series(fold == held_out)), train.filter(pl.Series(fold != held_out))
        patterns = mine_patterns(rest, cfg)
        predictions = predict_baseline(infer_categories(target, rest), patterns, BaselineConfig(method="pattern"))
        frames.append(session_scores(predictions, target).select("session_id", pl.col("precision").alias("score")))
    return pl.concat(frames).sort("session_id")


def combine_domains(target: pl.DataFrame, others: list[pl.DataFrame],
                    keep_splits: tuple[str, ...] = ("train",)) -> pl.DataFrame:
    """The target domain's frame as is, plus the other domains' rows with disjoint session ids.

    For a sessions frame, only the other domains' `keep_splits` sessions are kept: training sessions add knowledge,
    never targets. Frames without session_id (domain-level knowledge lines, patterns) are simply concatenated.
    """
    parts = [target]
    for index, other in enumerate(others):
        if "session_id" in other.columns:
            if "split" in other.columns:
                other = other.filter(pl.col("split").is_in(keep_splits))
            other = other.with_columns(pl.col("session_id") + (index + 1) * _DOMAIN_ID_STRIDE)
        parts.append(other.select(target.columns))
    if target.height and "session_id" in target.columns and target["session_id"].max() >= _DOMAIN_ID_STRIDE:
        raise ValueError(f"combine_domains: session ids must be below {_DOMAIN_ID_STRIDE} to pool domains")
    return pl.concat(parts, how="vertical_relaxed")


def pool_training(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Several domains' training rows with disjoint session ids, the same whichever domain is the target.

    What a multi-domain adapter trains on: `combine_domains` keeps the target's test sessions and numbers the other
    domains by their position after it, so each target would get a different training frame and its own adapter.
    A sessions frame keeps every domain's validation sessions too, on which the adapter is chosen (never a test
    session); retrieval indexes the training sessions alone, and SFT examples are built from them alone.
    """
    if not frames:
        raise ValueError("pool_training: no domain to pool")
    return combine_domains(frames[0].clear(), frames, keep_splits=("train", "valid"))
