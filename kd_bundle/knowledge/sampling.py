"""Knowledge quantity (RQ2): which training sessions feed a knowledge pool, and pools from several domains or formats.

`sample_sessions` keeps max(1, round(ratio * n)) training sessions, deterministically for a seed, and returns them
in their original row order with the input's columns. The four strategies:

    random      a seeded permutation; the sample is its first k rows.
    length      by session length (number of items). "longest" (default): the k longest sessions, ties broken
                by a seeded permutation; the longer a session, the more bundles and product relations it shows.
                "shortest": the k shortest. "stratified": each length gets its proportional share (largest
                remainder), a seeded permutation within; it keeps the training length mix, so it is random sampling
                in expectation and only kept for comparison.
    diversity   cover the embedding space. "kmeans" (default): k-means with k = sample size, then the session
                nearest each centroid (each session used once); it lowers the mean distance from a session to
                its nearest sampled one. "farthest": farthest-point sampling from a seeded first session; it
                lowers the largest such distance but favours outliers. Distances are Euclidean; L2-normalise the
                embeddings for cosine.
    difficulty  hardest first: lowest `score`, ties broken by a seeded permutation. The pipeline's score is the
                strict precision of the teacher's first answer on the session (kd_bundle.knowledge.pools.teacher_difficulty),
                or the held-out pattern baseline's precision (kd_bundle.knowledge.pools.pattern_difficulty).

Nested samples (same seed, smaller ratio => subset of the larger ratio's sample): random, difficulty, length/longest,
length/shortest and diversity/farthest are nested by construction (each takes a prefix of one fixed order).
length/stratified is nested within each length, but largest-remainder rounding can move one slot between lengths as k grows (the Alabama paradox), so
it is not guaranteed. diversity/kmeans is not nested: k-means with a different k finds different centroids.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

DIFFICULTY_COLUMNS = ["session_id", "score"]
KNOWLEDGE_COLUMNS = ["session_id", "knowledge"]  # contract of one format's knowledge pool
AGGREGATE_COLUMNS = ["session_id", "formats", "knowledge"]
SOURCE_DOMAIN = "source_domain"
# Section order and headings of an aggregated knowledge text; other formats follow, alphabetically.
FORMAT_HEADINGS = {"raw": "Examples", "patterns": "Patterns", "rules": "Rules", "thoughts": "Thoughts"}


class SamplingConfig(BaseModel, frozen=True, extra="forbid"):
    """How much of the training knowledge a cell sees, and which part (RQ2)."""

    strategy: Literal["random", "length", "diversity", "difficulty"] = Field(
        "random", description="Which sessions to keep: random, by length, embedding coverage, hardest first."
    )
    ratio: float = Field(1.0, gt=0, le=1, description="Share of training sessions kept; the study sweeps 0.1..1.0.")
    size: int | None = Field(None, ge=1, description="Sessions kept instead of a share (the teacher's budget); at most all.")
    seed: int = Field(0, description="Seed of every random choice; the same seed gives the same sample.")
    length_order: Literal["longest", "shortest", "stratified"] = Field(
        "longest", description="length strategy: longest sessions first, shortest first, or length-stratified."
    )
    diversity_method: Literal["kmeans", "farthest"] = Field(
        "kmeans", description="kmeans: session nearest each k-means centroid; farthest: farthest-point, nested samples."
    )


def sample_sessions(
    train: pl.DataFrame,
    cfg: SamplingConfig,
    *,
    embeddings: np.ndarray | None = None,
    difficulty: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """A subset of `train` (same columns, original row order) of size max(1, round(cfg.ratio * n)), or `cfg.size` (at most n).

    Args:
        train: training sessions, one row each, with a unique `session_id` (and `item_ids` for "length").
        cfg: strategy, ratio and seed.
        embeddings: (n, d) array aligned with `train` rows; required by "diversity".
        difficulty: frame with `session_id` and `score` (lower = harder) for every training session; required
            by "difficulty". Extra sessions are ignored.
    Returns:
        The sampled rows of `train`.
    """
    _check_train(train, cfg)
    size = min(cfg.size, train.height) if cfg.size is not None else sample_size(train.height, cfg.ratio)
    if cfg.strategy == "random":
        rows = _random_rows(train.height, size, cfg.seed)
    elif cfg.strategy == "length":
        rows = _length_rows(train["item_ids"].list.len().to_numpy(), size, cfg)
    elif cfg.strategy == "diversity":
        rows = _diversity_rows(_checked_embeddings(embeddings, train.height), size, cfg)
    else:
        rows = _difficulty_rows(train, _checked_difficulty(difficulty, train), size, cfg.seed)
    log.info("sample_sessions: %s kept %d of %d sessions", cfg.strategy, size, train.height)
    return train[np.sort(rows)]


def sample_size(n: int, ratio: float) -> int:
    """max(1, round(ratio * n)), never more than n (Python's round: halves go to the even neighbour)."""
    return min(n, max(1, round(ratio * n)))


def accumulate_domains(pools: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Multi-domain accumulation: one knowledge format's pools from several domains in one frame.

    Args:
        pools: domain -> pool (any frame with a `session_id`; all pools with the same columns).
    Returns:
        The pools stacked in domain-name order, with `source_domain` first; (source_domain, session_id) is unique.
    """
    if not pools:
        raise ValueError("accumulate_domains: no pools given")
    domains = sorted(pools)
    columns = pools[domains[0]].columns
    for domain in domains:
        pool = pools[domain]
        _require(pool, ["session_id"], f"accumulate_domains: pool {domain!r}")
        if SOURCE_DOMAIN in pool.columns:
            raise ValueError(f"accumulate_domains: pool {domain!r} already has a {SOURCE_DOMAIN!r} column")
        if set(pool.columns) != set(columns):
            raise ValueError(
                f"accumulate_domains: pool {domain!r} has columns {pool.columns}; pool {domains[0]!r} has {columns}"
            )
        _require_unique_ids(pool, f"accumulate_domains: pool {domain!r}")
    frames = [pools[d].select(pl.lit(d).alias(SOURCE_DOMAIN), *columns) for d in domains]
    try:
        return pl.concat(frames, how="vertical")
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"accumulate_domains: pools of {domains} have different column types ({exc})") from None


def aggregate_formats(pools: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Multi-format aggregation: one knowledge text per session joining several formats under headings.

    Args:
        pools: format name -> pool with `session_id` and a `knowledge` str column (KNOWLEDGE_COLUMNS).
    Returns:
        AGGREGATE_COLUMNS sorted by session_id: `formats` lists the formats present, and `knowledge` holds one
        "Rules:\\n..." section per format, in FORMAT_HEADINGS order. A session missing from a pool, or with empty
        knowledge there, gets no section for it; a session with no knowledge at all is left out.
    """
    if not pools:
        raise ValueError("aggregate_formats: no pools given")
    sections = []
    for rank, fmt in enumerate(sorted(pools, key=_format_order)):
        pool = pools[fmt]
        _require(pool, KNOWLEDGE_COLUMNS, f"aggregate_formats: pool {fmt!r}")
        if pool.schema["knowledge"] != pl.String:
            dtype = pool.schema["knowledge"]
            raise ValueError(f"aggregate_formats: pool {fmt!r} column 'knowledge' is {dtype}, not str")
        _require_unique_ids(pool, f"aggregate_formats: pool {fmt!r}")
        heading = FORMAT_HEADINGS.get(fmt, fmt.capitalize())
        sections.append(
            pool.filter(pl.col("knowledge").str.strip_chars().str.len_chars() > 0).select(
                pl.col("session_id"),
                pl.lit(rank).alias("rank"),
                pl.lit(fmt).alias("format"),
                (pl.lit(f"{heading}:\n") + pl.col("knowledge").str.strip_chars()).alias("section"),
            )
        )
    return (
        pl.concat(sections, how="vertical")
        .sort("session_id", "rank")
        .group_by("session_id", maintain_order=True)
        .agg(pl.col("format").alias("formats"), pl.col("section").str.join("\n\n").alias("knowledge"))
        .select(AGGREGATE_COLUMNS)
    )


def _random_rows(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)[:size]


def _length_rows(lengths: np.ndarray, size: int, cfg: SamplingConfig) -> np.ndarray:
    tie_break = np.random.default_rng(cfg.seed).permutation(len(lengths))
    if cfg.length_order == "longest":
        return np.lexsort((tie_break, -lengths))[:size]
    if cfg.length_order == "shortest":
        return np.lexsort((tie_break, lengths))[:size]
    return _stratified_length_rows(lengths, size, cfg.seed)


def _stratified_length_rows(lengths: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Proportional allocation per length (largest remainder, exact integer arithmetic), seeded picks within."""
    strata, counts = np.unique(lengths, return_counts=True)
    shares = size * counts  # quota = shares / n
    allocation = shares // len(lengths)
    remainders = shares % len(lengths)
    # 1) one extra slot for the largest remainders; equal remainders go to the shorter length first
    extra = np.lexsort((strata, -remainders))[: size - allocation.sum()]
    allocation[extra] += 1
    # 2) within each length, a prefix of one seeded permutation
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(lengths == s))[:k] for s, k in zip(strata, allocation)]
    return np.concatenate(picks)


def _diversity_rows(embeddings: np.ndarray, size: int, cfg: SamplingConfig) -> np.ndarray:
    if size == len(embeddings):
        return np.arange(size)
    if cfg.diversity_method == "farthest":
        return _farthest_point_rows(embeddings, size, cfg.seed)
    return _kmeans_rows(embeddings, size, cfg.seed)


def _kmeans_rows(embeddings: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The session nearest each k-means centroid; a session already taken goes to the next-nearest centroid."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # fewer distinct points than clusters: handled below by unique assignment
        warnings.simplefilter("ignore", ConvergenceWarning)
        distances = KMeans(n_clusters=size, random_state=seed, n_init=1).fit(embeddings).transform(embeddings).T
    taken = np.zeros(len(embeddings), dtype=bool)
    rows = []
    for centroid in np.argsort(distances.min(axis=1), kind="stable"):  # tightest clusters choose first
        row = int(np.argmin(np.where(taken, np.inf, distances[centroid])))
        taken[row] = True
        rows.append(row)
    return np.array(rows)


def _farthest_point_rows(embeddings: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Greedy farthest-point order from a seeded first session; any prefix is the sample of that size."""
    squared_norms = np.einsum("ij,ij->i", embeddings, embeddings)

    def squared_distances(row: int) -> np.ndarray:  # |x - e|^2 = |x|^2 + |e|^2 - 2 x.e, one mat-vec per pick
        return squared_norms + squared_norms[row] - 2.0 * (embeddings @ embeddings[row])

    rows = [int(np.random.default_rng(seed).integers(len(embeddings)))]
    nearest = squared_distances(rows[0])
    for _ in range(size - 1):
        nearest[rows] = -np.inf  # never pick a session twice (duplicates have distance 0)
        row = int(np.argmax(nearest))
        rows.append(row)
        nearest = np.minimum(nearest, squared_distances(row))
    return np.array(rows)


def _difficulty_rows(train: pl.DataFrame, difficulty: pl.DataFrame, size: int, seed: int) -> np.ndarray:
    scores = (
        train.select("session_id")
        .join(difficulty.select(DIFFICULTY_COLUMNS), on="session_id", how="left", maintain_order="left")["score"]
        .to_numpy()
    )
    tie_break = np.random.default_rng(seed).permutation(len(scores))
    return np.lexsort((tie_break, scores))[:size]


def _check_train(train: pl.DataFrame, cfg: SamplingConfig) -> None:
    required = ["session_id", "item_ids"] if cfg.strategy == "length" else ["session_id"]
    _require(train, required, "sample_sessions: train")
    if train.height == 0:
        raise ValueError("sample_sessions: train has no sessions")
    _require_unique_ids(train, "sample_sessions: train")


def _checked_embeddings(embeddings: np.ndarray | None, n: int) -> np.ndarray:
    if embeddings is None:
        raise ValueError("sample_sessions: strategy 'diversity' needs embeddings, an (n, d) array aligned with train")
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"sample_sessions: embeddings have shape {array.shape}; expected ({n}, d), a row per session")
    if not np.isfinite(array).all():
        raise ValueError("sample_sessions: embeddings contain NaN or infinite values")
    return array


def _checked_difficulty(difficulty: pl.DataFrame | None, train: pl.DataFrame) -> pl.DataFrame:
    if difficulty is None:
        raise ValueError("sample_sessions: strategy 'difficulty' needs a difficulty frame (session_id, score)")
    _require(difficulty, DIFFICULTY_COLUMNS, "sample_sessions: difficulty")
    _require_unique_ids(difficulty, "sample_sessions: difficulty")
    scored = difficulty.filter(pl.col("score").is_not_null() & ~pl.col("score").cast(pl.Float64).is_nan())
    missing = train.join(scored, on="session_id", how="anti")["session_id"].to_list()
    if missing:
        shown = ", ".join(str(s) for s in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"sample_sessions: {len(missing)} training session(s) have no difficulty score: {shown}")
    return scored.with_columns(pl.col("score").cast(pl.Float64))


def _require(frame: pl.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {frame.columns}")


def _require_unique_ids(frame: pl.DataFrame, where: str) -> None:
    duplicated = frame.filter(pl.col("session_id").is_duplicated())["session_id"].unique().sort().to_list()
    if duplicated:
        raise ValueError(f"{where}: session_id not unique, repeated: {duplicated[:10]}")


def _format_order(fmt: str) -> tuple[int, str]:
    order = list(FORMAT_HEADINGS)
    return (order.index(fmt), fmt) if fmt in order else (len(order), fmt)
