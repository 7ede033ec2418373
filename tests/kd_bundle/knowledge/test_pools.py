"""Pooling sessions and knowledge across domains, on real Food and Clothing slices."""

from __future__ import annotations

import polars as pl
import pytest

from kd_bundle.config import DataConfig, PatternConfig, settings
from kd_bundle.data.sessions import load_sessions, split_of
from kd_bundle.knowledge.patterns import mine_patterns
from kd_bundle.knowledge.pools import combine_domains, pool_training


@pytest.fixture(scope="module")
def domains() -> dict[str, pl.DataFrame]:
    return {d: load_sessions(DataConfig(domain=d, max_train_sessions=30, max_test_sessions=9), settings().data_root)
            for d in ("food", "clothing")}


def test_combine_domains_keeps_the_target_and_adds_only_training_sessions(domains):
    food, clothing = domains["food"], domains["clothing"]
    pooled = combine_domains(food, [clothing])
    assert pooled.head(food.height).equals(food)  # the target as is: its test sessions stay targets
    added = pooled.tail(pooled.height - food.height)
    assert added.height == split_of(clothing, "train").height and set(added["split"]) == {"train"}
    assert added["titles"].to_list() == split_of(clothing, "train")["titles"].to_list()
    assert pooled["session_id"].n_unique() == pooled.height


def test_pool_training_is_the_same_for_every_target(domains):
    food, clothing = domains["food"], domains["clothing"]
    pooled = pool_training([food, clothing])
    assert set(pooled["split"]) == {"train", "valid"}  # a multi-domain adapter is chosen on both validation splits
    for split in ("train", "valid"):
        assert split_of(pooled, split).height == split_of(food, split).height + split_of(clothing, split).height
    assert pooled["session_id"].n_unique() == pooled.height
    # what the two targets' multi-domain adapters train on, were it built target-first, differs; this does not
    as_food, as_clothing = combine_domains(food, [clothing]), combine_domains(clothing, [food])
    assert not split_of(as_food, "train").sort("session_id").equals(split_of(as_clothing, "train").sort("session_id"))
    assert pool_training([food, clothing]).equals(pooled)


def test_pool_training_concatenates_domain_level_knowledge(domains):
    patterns = {d: mine_patterns(split_of(frame, "train"), PatternConfig(min_support=0.05)) for d, frame in domains.items()}
    pooled = pool_training([patterns["food"], patterns["clothing"]])
    assert pooled.equals(pl.concat([patterns["food"], patterns["clothing"]]))


def test_pool_training_needs_a_domain():
    with pytest.raises(ValueError, match="no domain to pool"):
        pool_training([])


def test_pattern_difficulty_scores_every_training_session_with_it_held_out(domains):
    from kd_bundle.config import BaselineConfig
    from kd_bundle.evaluation.baselines import predict_baseline
    from kd_bundle.evaluation.metrics import session_scores
    from kd_bundle.knowledge.pools import pattern_difficulty

    sessions = domains["clothing"]
    train = split_of(sessions, "train")
    held_out = pattern_difficulty(sessions, PatternConfig(), folds=5, seed=0)
    assert held_out["session_id"].to_list() == sorted(train["session_id"].to_list())
    assert held_out["score"].is_between(0.0, 1.0).all()
    # scoring a session with patterns mined from its own bundles (the old proxy) flatters the pattern baseline
    own = predict_baseline(train, mine_patterns(train, PatternConfig()), BaselineConfig(method="pattern"))
    in_sample = session_scores(own, train)["precision"].mean()
    assert held_out["score"].mean() < in_sample
    assert pattern_difficulty(sessions, PatternConfig(), folds=5, seed=0).equals(held_out)


def test_teacher_difficulty_is_the_first_answers_precision():
    from kd_bundle.knowledge.pools import teacher_difficulty

    rules = pl.DataFrame({"session_id": [3, 1], "first_precision": [0.5, 0.0], "first_error_codes": [[0, 2], [5]]})
    assert teacher_difficulty(rules).to_dicts() == [
        {"session_id": 1, "score": 0.0, "error_codes": [5]},
        {"session_id": 3, "score": 0.5, "error_codes": [0, 2]},
    ]
    with pytest.raises(ValueError, match="first_precision"):
        teacher_difficulty(rules.drop("first_precision"))
