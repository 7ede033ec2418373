"""The leak test: nothing a student sees depends on the test sessions' ground truth or on their given categories.

BundleRec lists categories only for bundled items, so a test item's given category says "this item is in a bundle".
On real slices of all three domains, the ICL prompts of every knowledge format (raw, patterns, rules, thoughts, and
all of them together) for the test sessions, the SFT training inputs, and the held-out pattern difficulty must come
out byte-identical when the test sessions' bundles, intents and given categories are removed or shuffled.
"""

from __future__ import annotations

import os
import random

import polars as pl
import pytest

from kd_bundle.config import DataConfig, PatternConfig, settings
from kd_bundle.data.sessions import load_sessions, split_of
from kd_bundle.knowledge.patterns import mine_patterns
from kd_bundle.knowledge.pools import pattern_difficulty
from kd_bundle.student.icl import ICLConfig, build_prompts, build_sft_examples
from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge
from tests.kd_bundle.tiny_student import build_tiny_student

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FORMATS = ("raw", "patterns", "rules", "thoughts")
RETRIEVAL = RetrievalConfig(method="tfidf", k=3, tfidf_features=512)
NO_LIMIT = 1_000_000  # tokens: nothing may be cut, so any difference in knowledge shows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(build_tiny_student(tmp_path_factory.mktemp("tiny"))))


def _real_slice(domain: str) -> pl.DataFrame:
    cfg = DataConfig(domain=domain, max_train_sessions=60, max_test_sessions=18)
    return load_sessions(cfg, settings().data_root).filter(pl.col("split") != "valid")


def _without_test_truth(sessions: pl.DataFrame) -> pl.DataFrame:
    """Test sessions lose their bundles, intents and every given category."""
    test = pl.col("split") == "test"
    return sessions.with_columns(
        bundles=pl.when(test).then(pl.lit([], dtype=pl.List(pl.List(pl.String)))).otherwise("bundles"),
        intents=pl.when(test).then(pl.lit([], dtype=pl.List(pl.String))).otherwise("intents"),
        categories=pl.when(test).then(pl.col("categories").list.eval(pl.lit(None, dtype=pl.String)))
        .otherwise("categories"),
    )


def _shuffled_test_truth(sessions: pl.DataFrame) -> pl.DataFrame:
    """Test sessions get categories shuffled across all test items and made-up bundles of their own items."""
    rng = random.Random(7)
    test = sessions.filter(pl.col("split") == "test")
    flat = [c for cats in test["categories"].to_list() for c in cats]
    rng.shuffle(flat)
    categories, bundles, start = [], [], 0
    for items in test["item_ids"].to_list():
        categories.append(flat[start : start + len(items)])
        start += len(items)
        picked = rng.sample(items, 2)
        bundles.append([picked, list(reversed(items))[:2]] if len(items) > 2 else [picked])
    changed = test.with_columns(
        categories=pl.Series(categories, dtype=pl.List(pl.String)),
        bundles=pl.Series(bundles, dtype=pl.List(pl.List(pl.String))),
        intents=pl.Series([["made up"] * len(b) for b in bundles], dtype=pl.List(pl.String)),
    )
    return pl.concat([sessions.filter(pl.col("split") != "test"), changed]).sort("session_id")


def _knowledge_pool(sessions: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Every format as the pipeline builds it: raw sessions, mined patterns, small synthetic rules and thoughts."""
    train = split_of(sessions, "train")
    ids, titles = train["session_id"].to_list(), train["titles"].to_list()
    rules = pl.DataFrame({"session_id": ids, "rules": [f"- Bundle {t[0][:30]!r} with related products." for t in titles]})
    thoughts = pl.DataFrame({"session_id": ids, "thought": [f"The shopper looks at {t[-1][:30]!r}." for t in titles]})
    return {"raw": sessions, "patterns": mine_patterns(train, PatternConfig()), "rules": rules, "thoughts": thoughts}


def _what_the_student_sees(sessions: pl.DataFrame, tokenizer) -> dict[str, list]:
    pool = _knowledge_pool(sessions)
    embeddings = embed_sessions(sessions, RETRIEVAL)
    retrieved = retrieve_knowledge(sessions, embeddings, build_index(embeddings, sessions), pool, RETRIEVAL)
    test = split_of(sessions, "test")
    seen = {}
    for formats in [(f,) for f in FORMATS] + [FORMATS]:
        prompts = build_prompts(test, retrieved, tokenizer, ICLConfig(formats=formats), NO_LIMIT)
        seen["icl " + "+".join(formats)] = prompts["prompt"].to_list()
    for formats in [("patterns",), ("rules",), ("raw", "patterns", "rules")]:
        examples = build_sft_examples(sessions, retrieved, pool["thoughts"], tokenizer, ICLConfig(formats=formats),
                                      NO_LIMIT)
        seen["sft " + "+".join(formats)] = examples["prompt"].to_list()
    seen["difficulty (held-out patterns)"] = pattern_difficulty(sessions, PatternConfig()).rows()
    return seen


@pytest.mark.parametrize("domain", ["electronic", "clothing", "food"])
def test_test_truth_and_given_categories_never_reach_the_student(domain, tokenizer):
    sessions = _real_slice(domain)
    test = split_of(sessions, "test")
    assert test["categories"].list.eval(pl.element().is_not_null()).list.sum().sum() > 0  # something could leak
    reference = _what_the_student_sees(sessions, tokenizer)
    assert any("often bundled together" in p for p in reference["icl patterns"])  # pattern lines are really there
    for perturb in (_without_test_truth, _shuffled_test_truth):
        perturbed = perturb(sessions)
        assert not perturbed.equals(sessions)
        seen = _what_the_student_sees(perturbed, tokenizer)
        for name, values in reference.items():
            assert seen[name] == values, f"{domain}: {name} changed when {perturb.__name__} was applied"
