"""Thoughts: the teacher's reasoning path, stored with the true bundles as ICL demonstration and SFT target."""

from __future__ import annotations

import polars as pl

from kd_bundle.data.parsing import parse_bundles
from kd_bundle.data.prompts import bundle_positions
from kd_bundle.knowledge.thoughts import THOUGHT_COLUMNS, ThoughtConfig, clean_thought, distill_thoughts, thought_prompt
from kd_bundle.teacher import RequestCache, TeacherClient, TeacherConfig, request_cache_path
from tests.kd_bundle.openai_stub import TRUNCATED, StubOpenAI, electronic_sessions, stub, teacher_env  # noqa: F401

CFG = TeacherConfig(model="stub-teacher", max_tokens=128)


def test_thought_prompt_shows_products_true_bundles_and_intents():
    text = thought_prompt(["Camera", "SD card", "Tripod"], [[1, 2]], ["take photos"])
    assert "{'product1': 'Camera', 'product2': 'SD card', 'product3': 'Tripod'}" in text
    assert "{'bundle1': ['product1', 'product2']}" in text and "{'bundle1': 'take photos'}" in text
    assert "Step 1" in text and "intent" in text


def test_clean_thought_strips_fences_and_a_trailing_answer_and_rejects_noise():
    thought, error = clean_thought("The camera needs storage, so the card belongs with it for the trip ahead. "
                                   "{'bundle1': ['product1', 'product2']}", min_words=5)
    assert error is None and thought.endswith("trip ahead.")
    assert clean_thought("```{}```  ok", min_words=5) == (None, "answer has 1 words of prose; a reasoning path needs 5+")
    thought, error = clean_thought("a bundle of " + "boxes of " * 30, min_words=5, min_distinct_ratio=0.3)
    assert thought is None and error.startswith("answer repeats itself")


def test_distill_thoughts_end_to_end_on_real_sessions(stub, electronic_sessions):
    with TeacherClient(CFG) as client:
        thoughts = distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(), client)
    train = electronic_sessions.filter(pl.col("split") == "train")
    assert thoughts.schema == pl.Schema(THOUGHT_COLUMNS)
    assert thoughts["session_id"].to_list() == train["session_id"].to_list()
    assert thoughts["error"].null_count() == thoughts.height == 4
    for row, session in zip(thoughts.iter_rows(named=True), train.iter_rows(named=True)):
        assert row["thought"].startswith("Step 1:")
        assert row["bundles"] == session["bundles"] and row["intents"] == session["intents"]
        # the answer string is the SFT target: it parses back to exactly the true bundles
        assert parse_bundles(row["answer"], len(session["item_ids"])).bundles == bundle_positions(
            session["bundles"], session["item_ids"])
        assert [t["role"] for t in row["conversation"]] == ["user", "assistant"]
        assert "Reasoning: Step 1:" in row["knowledge"] and row["knowledge"].endswith(row["answer"])
    assert len(stub.answered) == 4
    with TeacherClient(CFG) as client:  # the rerun is free and identical
        assert distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(), client).equals(thoughts)
    assert len(stub.answered) == 4


def test_a_garbage_thought_is_a_recorded_failure_with_its_raw_text(teacher_env, electronic_sessions, monkeypatch):
    with StubOpenAI(lambda messages: "{'bundle1': ['product1']}") as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            thoughts = distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(), client)
            assert client.progress().failures == 4
    assert thoughts["thought"].null_count() == 4 and thoughts["knowledge"].null_count() == 4
    assert thoughts["error"].str.starts_with("answer has").all()
    assert {c[1]["content"] for c in thoughts["conversation"].to_list()} == {"{'bundle1': ['product1']}"}


def test_a_thought_cut_at_its_token_budget_is_a_failure_and_is_not_cached(stub, electronic_sessions):
    stub.always_fail = TRUNCATED
    with TeacherClient(CFG) as client:
        thoughts = distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(max_tokens=300), client)
        assert client.progress().truncated == 4 and client.progress().failures == 4
    assert {b["max_tokens"] for b in stub.answered} == {300}  # the thought's own budget, not the TeacherConfig's
    assert thoughts["thought"].null_count() == 4 and thoughts["knowledge"].null_count() == 4
    assert (thoughts["error"] == "answer cut at max_tokens=300").all()
    assert len(RequestCache(request_cache_path())) == 0
    stub.always_fail = None
    with TeacherClient(CFG) as client:  # a rerun asks again and keeps the full thoughts
        assert distill_thoughts(electronic_sessions, "electronic", ThoughtConfig(max_tokens=300), client)["error"].null_count() == 4
