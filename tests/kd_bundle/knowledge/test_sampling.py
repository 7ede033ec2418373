"""Sampling strategies, domain accumulation and format aggregation: tiny fixtures plus the real food training split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest

from kd_bundle.config import DataConfig, settings
from kd_bundle.data.sessions import load_sessions, split_of
from kd_bundle.knowledge.sampling import (
    AGGREGATE_COLUMNS,
    SamplingConfig,
    accumulate_domains,
    aggregate_formats,
    sample_sessions,
    sample_size,
)

STRATEGIES = ["random", "length", "diversity", "difficulty"]
RATIOS = [round(0.1 * i, 1) for i in range(1, 11)]


@pytest.fixture(scope="module")
def food_train() -> pl.DataFrame:
    data_root = settings().data_root
    if not (data_root / "food").exists():
        pytest.skip(f"real data not found under {data_root}")
    return split_of(load_sessions(DataConfig(domain="food"), data_root), "train")


@pytest.fixture(scope="module")
def food_embeddings(food_train: pl.DataFrame) -> np.ndarray:
    """TF-IDF over each session's titles, reduced to 64 dimensions (LSA) to keep k-means fast; rows = food_train."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    documents = [" ".join(titles) for titles in food_train["titles"].to_list()]
    return TruncatedSVD(64, random_state=0).fit_transform(TfidfVectorizer().fit_transform(documents))


@pytest.fixture(scope="module")
def food_difficulty(food_train: pl.DataFrame) -> pl.DataFrame:
    """A stand-in reference score: bundled item slots per session item (a reference model's precision in a run)."""
    return food_train.select(
        "session_id",
        score=pl.col("bundles").list.eval(pl.element().list.len()).list.sum() / pl.col("item_ids").list.len(),
    )


def _inputs(strategy: str, embeddings: np.ndarray, difficulty: pl.DataFrame) -> dict:
    return {"diversity": {"embeddings": embeddings}, "difficulty": {"difficulty": difficulty}}.get(strategy, {})


def _tiny(n: int = 10) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "session_id": list(range(100, 100 + n)),
            "item_ids": [[f"i{j}" for j in range(2 + i % 3)] for i in range(n)],
        }
    )


# ---- real data: every strategy -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_on_real_food_train(strategy, food_train, food_embeddings, food_difficulty):
    inputs = _inputs(strategy, food_embeddings, food_difficulty)
    for ratio in (0.1, 0.3):
        cfg = SamplingConfig(strategy=strategy, ratio=ratio, seed=7)
        sample = sample_sessions(food_train, cfg, **inputs)
        assert sample.height == round(ratio * food_train.height)
        assert sample.columns == food_train.columns and sample.schema == food_train.schema
        assert sample["session_id"].is_unique().all()
        assert sample["session_id"].is_in(food_train["session_id"].implode()).all()
        assert sample.equals(sample_sessions(food_train, cfg, **inputs)), "same seed, same sample"
    full = sample_sessions(food_train, SamplingConfig(strategy=strategy, ratio=1.0), **inputs)
    assert full.equals(food_train)


@pytest.mark.parametrize("strategy", ["random", "length", "diversity"])
def test_another_seed_gives_another_sample(strategy, food_train, food_embeddings, food_difficulty):
    inputs = _inputs(strategy, food_embeddings, food_difficulty)
    ids = [
        set(sample_sessions(food_train, SamplingConfig(strategy=strategy, ratio=0.2, seed=s), **inputs)["session_id"])
        for s in (0, 1)
    ]
    assert ids[0] != ids[1]


@pytest.mark.parametrize("order", ["longest", "shortest"])
def test_length_takes_the_longest_or_the_shortest_sessions(order, food_train):
    sample = sample_sessions(food_train, SamplingConfig(strategy="length", ratio=0.2, length_order=order))
    chosen = food_train["session_id"].is_in(sample["session_id"].implode())
    kept, left = food_train.filter(chosen)["item_ids"].list.len(), food_train.filter(~chosen)["item_ids"].list.len()
    if order == "longest":
        assert kept.min() >= left.max() and kept.mean() > food_train["item_ids"].list.len().mean()
    else:
        assert kept.max() <= left.min() and kept.mean() < food_train["item_ids"].list.len().mean()


def test_stratified_length_keeps_length_proportions(food_train):
    lengths = Counter(food_train["item_ids"].list.len().to_list())
    for ratio in (0.1, 0.25, 0.5):
        cfg = SamplingConfig(strategy="length", ratio=ratio, seed=3, length_order="stratified")
        sample = sample_sessions(food_train, cfg)
        got = Counter(sample["item_ids"].list.len().to_list())
        for length, count in lengths.items():
            quota = sample.height * count / food_train.height
            assert abs(got.get(length, 0) - quota) < 1, (ratio, length, got.get(length, 0), quota)


def test_diversity_covers_the_embedding_space_better_than_random(food_train, food_embeddings):
    """k-means lowers the mean distance to the nearest sampled session; farthest-point lowers the largest."""
    from sklearn.metrics import pairwise_distances

    def distance_to_sample(sample: pl.DataFrame) -> np.ndarray:
        rows = np.flatnonzero(food_train["session_id"].is_in(sample["session_id"].implode()).to_numpy())
        return pairwise_distances(food_embeddings, food_embeddings[rows]).min(axis=1)

    kmeans = distance_to_sample(
        sample_sessions(food_train, SamplingConfig(strategy="diversity", ratio=0.1), embeddings=food_embeddings)
    )
    farthest = distance_to_sample(
        sample_sessions(
            food_train,
            SamplingConfig(strategy="diversity", ratio=0.1, diversity_method="farthest"),
            embeddings=food_embeddings,
        )
    )
    randoms = [distance_to_sample(sample_sessions(food_train, SamplingConfig(ratio=0.1, seed=s))) for s in range(5)]
    assert kmeans.mean() < min(r.mean() for r in randoms)
    assert farthest.max() < min(r.max() for r in randoms)


def test_difficulty_takes_the_hardest_sessions(food_train, food_difficulty):
    sample = sample_sessions(food_train, SamplingConfig(strategy="difficulty", ratio=0.2), difficulty=food_difficulty)
    kept = food_difficulty.filter(pl.col("session_id").is_in(sample["session_id"].implode()))["score"]
    left = food_difficulty.filter(~pl.col("session_id").is_in(sample["session_id"].implode()))["score"]
    assert kept.max() <= left.min()


@pytest.mark.parametrize(
    ("strategy", "method"),
    [("random", "kmeans"), ("difficulty", "kmeans"), ("diversity", "farthest"), ("length", "kmeans")],
)
def test_nested_samples(strategy, method, food_train, food_embeddings, food_difficulty):
    inputs = _inputs(strategy, food_embeddings, food_difficulty)
    previous: set[int] = set()
    for ratio in RATIOS:
        cfg = SamplingConfig(strategy=strategy, ratio=ratio, seed=5, diversity_method=method)
        ids = set(sample_sessions(food_train, cfg, **inputs)["session_id"])
        assert previous <= ids, ratio
        previous = ids


# ---- tiny fixtures: sizes, ties and errors -------------------------------------------------------------------


def test_sample_size_is_at_least_one_and_at_most_n():
    assert sample_size(10, 0.01) == 1
    assert sample_size(10, 0.34) == 3
    assert sample_size(10, 1.0) == 10
    assert sample_size(644, 0.1) == 64


def test_ratio_must_be_in_zero_one():
    for ratio in (0.0, -0.1, 1.1):
        with pytest.raises(ValueError):
            SamplingConfig(ratio=ratio)


def test_sampling_does_not_mutate_input():
    train = _tiny()
    before = train.clone()
    sample_sessions(train, SamplingConfig(strategy="length", ratio=0.5))
    assert train.equals(before)


def test_difficulty_ties_are_broken_by_seed():
    train = _tiny(20)
    flat = train.select("session_id", score=pl.lit(0.5))
    picks = set()
    for seed in range(5):
        sample = sample_sessions(train, SamplingConfig(strategy="difficulty", ratio=0.3, seed=seed), difficulty=flat)
        picks.add(tuple(sample["session_id"]))
    assert len(picks) > 1


def test_diversity_with_duplicate_embeddings_still_gives_distinct_sessions():
    train = _tiny(8)
    embeddings = np.repeat(np.eye(2), 4, axis=0)  # two distinct points, four copies each
    for method in ("kmeans", "farthest"):
        cfg = SamplingConfig(strategy="diversity", ratio=0.5, diversity_method=method)
        sample = sample_sessions(train, cfg, embeddings=embeddings)
        assert sample.height == 4 and sample["session_id"].is_unique().all()
        rows = np.flatnonzero(train["session_id"].is_in(sample["session_id"].implode()).to_numpy())
        assert len({tuple(embeddings[r]) for r in rows}) == 2, "both points covered"


def test_diversity_without_embeddings_is_an_error():
    with pytest.raises(ValueError, match="needs embeddings"):
        sample_sessions(_tiny(), SamplingConfig(strategy="diversity", ratio=0.5))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        sample_sessions(_tiny(), SamplingConfig(strategy="diversity", ratio=0.5), embeddings=np.zeros((3, 2)))


def test_difficulty_missing_scores_name_the_sessions():
    train = _tiny(4)
    partial = pl.DataFrame({"session_id": [100, 101], "score": [0.1, None]})
    with pytest.raises(ValueError, match=r"3 training session\(s\) have no difficulty score: 101, 102, 103"):
        sample_sessions(train, SamplingConfig(strategy="difficulty", ratio=0.5), difficulty=partial)
    with pytest.raises(ValueError, match="needs a difficulty frame"):
        sample_sessions(train, SamplingConfig(strategy="difficulty", ratio=0.5))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['score'\]"):
        sample_sessions(train, SamplingConfig(strategy="difficulty"), difficulty=train.select("session_id"))


def test_train_checks():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['item_ids'\]"):
        sample_sessions(_tiny().select("session_id"), SamplingConfig(strategy="length"))
    with pytest.raises(ValueError, match="no sessions"):
        sample_sessions(_tiny().head(0), SamplingConfig())
    with pytest.raises(ValueError, match=r"not unique, repeated: \[100\]"):
        sample_sessions(pl.concat([_tiny(), _tiny().head(1)]), SamplingConfig())


# ---- multi-domain accumulation and multi-format aggregation ------------------------------------------------------


def _pool(ids: list[int], texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"session_id": ids, "knowledge": texts})


def test_accumulate_domains_pairs_ids_with_domain():
    pools = {"food": _pool([1, 2], ["a", "b"]), "clothing": _pool([1, 3], ["c", "d"])}
    pooled = accumulate_domains(pools)
    assert pooled.columns == ["source_domain", "session_id", "knowledge"]
    assert pooled.height == 4
    assert pooled.select("source_domain", "session_id").is_unique().all()
    assert pooled["source_domain"].to_list() == ["clothing", "clothing", "food", "food"]
    assert pooled.equals(accumulate_domains(dict(reversed(list(pools.items()))))), "independent of dict order"


def test_accumulate_domains_errors():
    with pytest.raises(ValueError, match="no pools"):
        accumulate_domains({})
    with pytest.raises(ValueError, match="pool 'food' has columns"):
        accumulate_domains({"clothing": _pool([1], ["a"]), "food": _pool([1], ["a"]).with_columns(x=pl.lit(1))})
    with pytest.raises(ValueError, match=r"pool 'food'.*repeated: \[1\]"):
        accumulate_domains({"food": _pool([1, 1], ["a", "b"])})
    with pytest.raises(ValueError, match="different column types"):
        accumulate_domains({"clothing": _pool([1], ["a"]), "food": pl.DataFrame({"session_id": [1], "knowledge": [2]})})


def test_accumulate_real_training_splits(food_train):
    data_root = settings().data_root
    pools = {"food": food_train}
    if (data_root / "clothing").exists():
        pools["clothing"] = split_of(load_sessions(DataConfig(domain="clothing"), data_root), "train")
    pooled = accumulate_domains(pools)
    assert pooled.height == sum(p.height for p in pools.values())
    assert pooled.select("source_domain", "session_id").is_unique().all()


def test_aggregate_formats_joins_sections_in_format_order():
    pools = {
        "thoughts": _pool([1, 2], ["t1", "t2"]),
        "patterns": _pool([1, 2, 3], ["p1", " ", "p3"]),
        "rules": _pool([1], ["r1"]),
    }
    agg = aggregate_formats(pools)
    assert agg.columns == AGGREGATE_COLUMNS
    assert agg["session_id"].to_list() == [1, 2, 3]
    rows = {r["session_id"]: r for r in agg.iter_rows(named=True)}
    assert rows[1]["knowledge"] == "Patterns:\np1\n\nRules:\nr1\n\nThoughts:\nt1"
    assert rows[1]["formats"] == ["patterns", "rules", "thoughts"]
    assert rows[2]["knowledge"] == "Thoughts:\nt2", "empty knowledge gives no section"
    assert rows[3]["formats"] == ["patterns"]


def test_aggregate_formats_errors():
    with pytest.raises(ValueError, match="no pools"):
        aggregate_formats({})
    with pytest.raises(ValueError, match=r"pool 'rules': missing column\(s\) \['knowledge'\]"):
        aggregate_formats({"rules": pl.DataFrame({"session_id": [1]})})
    with pytest.raises(ValueError, match="not str"):
        aggregate_formats({"rules": pl.DataFrame({"session_id": [1], "knowledge": [1]})})
    with pytest.raises(ValueError, match=r"repeated: \[1\]"):
        aggregate_formats({"rules": _pool([1, 1], ["a", "b"])})
