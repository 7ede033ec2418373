"""Cost and quantity columns: extraction cost re-found in the request cache from the knowledge frames alone."""

from __future__ import annotations

import json

import polars as pl
import pytest

from kd_bundle.report import costs
from kd_bundle.knowledge.rules import RuleConfig, distill_rules
from kd_bundle.knowledge.thoughts import ThoughtConfig, distill_thoughts
from kd_bundle.teacher import RequestCache, TeacherClient, TeacherConfig, request_cache_path
from tests.kd_bundle.openai_stub import StubOpenAI, bundle_teacher, electronic_sessions, stub, teacher_env  # noqa: F401

CFG = TeacherConfig(model="stub-teacher", max_tokens=128)


def test_extraction_cost_sums_the_request_usage_records(teacher_env, electronic_sessions, monkeypatch):
    monkeypatch.setenv("KD_TEACHER_PRICE_PER_1K_PROMPT_TOKENS", "0.5")
    monkeypatch.setenv("KD_TEACHER_PRICE_PER_1K_COMPLETION_TOKENS", "1.5")
    with StubOpenAI(bundle_teacher, latency_s=0.01) as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            session_rules, _ = distill_rules(electronic_sessions, "electronic", RuleConfig(feedback_rounds=2), client)
            rule_usage = client.usage_frame()
        with TeacherClient(CFG) as client:
            thoughts = distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(), client)
            thought_usage = client.usage_frame()
    cache = RequestCache(request_cache_path())
    try:
        for frame, usage in ((session_rules, rule_usage), (thoughts, thought_usage)):
            keys = costs.conversation_request_keys(frame, CFG)
            assert sorted(set(keys)) == sorted(usage["request_key"].to_list()), "every request re-found, no other"
            spent = costs.usage_totals(cache.usage(keys), keys)
            assert spent["tokens"] == usage["prompt_tokens"].sum() + usage["completion_tokens"].sum() > 0
            expected = (usage["prompt_tokens"].sum() * 0.5 + usage["completion_tokens"].sum() * 1.5) / 1000
            assert spent["cost"] == pytest.approx(expected) and spent["cost"] > 0
            assert spent["seconds"] == pytest.approx(usage["latency_s"].sum()) and spent["missing_requests"] == 0
        # Frames written before request_keys were recorded: keys are recomputed from the turns and the settings.
        legacy = thoughts.drop("request_keys")
        other = costs.usage_totals(cache.usage(), costs.conversation_request_keys(legacy, CFG.model_copy(update={"max_tokens": 64})))
        assert (other["requests"], other["missing_requests"], other["tokens"]) == (0, 4, 0), "other settings, other keys"
    finally:
        cache.close()


def test_usage_totals_without_prices_is_unknown_money_and_counts_truncation():
    usage = pl.DataFrame({"request_key": ["a", "b"], "prompt_tokens": [10, 20], "completion_tokens": [5, 7],
                          "cost": [None, None], "latency_s": [0.5, 1.0], "finish_reason": ["stop", "length"]},
                         schema_overrides={"cost": pl.Float64})
    spent = costs.usage_totals(usage)
    assert (spent["tokens"], spent["cost"], spent["seconds"], spent["truncated"]) == (42, None, 1.5, 1)


def test_knowledge_quantity_of_real_rules_and_thoughts(stub, electronic_sessions):
    with TeacherClient(CFG) as client:
        session_rules, _ = distill_rules(electronic_sessions, "electronic", RuleConfig(feedback_rounds=2), client)
        thoughts = distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(), client)
    rules = costs.knowledge_quantity("session_rules", session_rules)
    assert rules["train_sessions"] == 4 and rules["rule_count"] == session_rules["rules"].list.len().sum() > 0
    assert rules["feedback_rounds"] == session_rules["feedback_rounds"].sum()
    assert rules["knowledge_tokens"] == costs.knowledge_tokens(session_rules["knowledge"].to_list()) > 0
    assert costs.knowledge_quantity("thoughts", thoughts)["thought_count"] == 4
    raw = costs.knowledge_quantity("sessions", electronic_sessions)
    assert raw["train_sessions"] == 4 and raw["rule_count"] == 0
    train_titles = electronic_sessions.filter(pl.col("split") == "train")["titles"].to_list()
    assert raw["knowledge_tokens"] == costs.knowledge_tokens([" ".join(t) for t in train_titles]) > 0
    both = costs.add_quantities([raw, rules, costs.knowledge_quantity("thoughts", thoughts)])
    assert both["train_sessions"] == 4 and both["thought_count"] == 4 and both["rule_count"] == rules["rule_count"]
    assert both["knowledge_tokens"] == raw["knowledge_tokens"] + rules["knowledge_tokens"] + costs.knowledge_tokens(
        thoughts["knowledge"].to_list())
    with pytest.raises(ValueError, match="unknown knowledge kind 'embeddings'"):
        costs.knowledge_quantity("embeddings", thoughts)


def test_knowledge_tokens_count_words_and_punctuation():
    assert costs.knowledge_tokens(["- Group a device, always.", None, ""]) == 7


def test_inference_usage_and_train_stats(tmp_path):
    old = pl.DataFrame({"session_id": [1, 2]})
    assert costs.inference_usage(old) == {"inference_prompt_tokens": None, "inference_new_tokens": None,
                                          "wall_seconds": None}
    new = old.with_columns(prompt_tokens=pl.Series([100, 120], dtype=pl.Int64),
                           new_tokens=pl.Series([30, None], dtype=pl.Int64), seconds=pl.Series([1.5, 2.0]))
    assert costs.inference_usage(new) == {"inference_prompt_tokens": 220, "inference_new_tokens": 30,
                                          "wall_seconds": 3.5}
    unknown = dict.fromkeys(costs.TRAIN_COLUMNS)
    assert costs.read_train_stats(None) == {**unknown, "train_seconds": 0.0, "train_tokens": 0}
    adapter = tmp_path / "abc123"
    adapter.mkdir()
    assert costs.read_train_stats(adapter) == unknown
    (tmp_path / "abc123.train_stats.json").write_text(json.dumps({"seconds": 12.5, "train_tokens": 4096}))
    assert costs.read_train_stats(adapter) == {**unknown, "train_seconds": 12.5, "train_tokens": 4096}  # older stats
    (tmp_path / "abc123.train_stats.json").write_text(json.dumps({
        "seconds": 12.5, "train_tokens": 4096, "examples": 150, "steps": 30, "best_step": 20,
        "train_losses": [1.0] * 30, "valid_steps": [0, 10, 20, 30], "valid_losses": [1.2, 0.9, 0.8, 0.85]}))
    stats = costs.read_train_stats(adapter)
    assert stats["train_examples"] == 150 and stats["train_steps"] == 30 and stats["best_step"] == 20
    assert stats["valid_loss"] == 0.8 and stats["valid_steps"] == [0, 10, 20, 30]  # the kept step's loss
    (tmp_path / "abc123.train_stats.json").write_text("{")
    with pytest.raises(ValueError, match="unreadable training stats"):
        costs.read_train_stats(adapter)
