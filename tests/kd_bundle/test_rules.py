"""Rules by self-reflection: AICL's error typing, feedback turns, rule splitting and consolidation, end to end."""

from __future__ import annotations

import polars as pl
import pytest

from kd_bundle.parsing import ParsedBundles
from kd_bundle.prompts import RULES_QUESTION
from kd_bundle.rules import (
    RULE_COLUMNS,
    SESSION_RULE_COLUMNS,
    RuleConfig,
    consolidate_rules,
    distill_rules,
    feedback_prompt,
    split_rules,
    type_errors,
)
from kd_bundle.teacher import TeacherClient, TeacherConfig
from tests.kd_bundle.openai_stub import StubOpenAI, electronic_sessions, stub, teacher_env  # noqa: F401

TRUTH = [[1, 2, 3], [4, 5]]


@pytest.mark.parametrize(
    ("generated", "codes"),
    [
        ([[1, 2, 3]], [0]),  # identical
        ([[6, 7]], [1]),  # disjoint from every true bundle
        ([[1, 2, 6]], [2]),  # irrelevant product 6
        ([[1, 2]], [3]),  # strict subset, missing 3
        ([[4]], [4]),  # a single product
        ([[4, 5], [1, 6, 7, 8]], [0, 2]),  # best match by Jaccard, per bundle
    ],
)
def test_error_codes_follow_aicl(generated, codes):
    assert type_errors(ParsedBundles(generated), TRUTH) == codes


def test_an_unreadable_or_hallucinated_answer_is_code_5():
    assert type_errors(ParsedBundles(None, error="no dict"), TRUTH) == [5]


def test_feedback_groups_bundles_by_tip_and_names_missing_bundles():
    text = feedback_prompt([0, 2, 2], n_items=6, missing=1)
    assert "bundle1 is correct and should be remained" in text
    assert "bundle2 and bundle3 are containing some irrelevant products" in text
    assert "1 bundle(s) in the sequence is not detected yet" in text
    assert text.endswith("{'bundle number':'product number'}.")
    assert "only product1 to product6 exist" in feedback_prompt([5], n_items=6)


def test_rules_are_split_from_lists_or_sentences():
    cfg = RuleConfig()
    assert split_rules("1. Group a phone with its case.\n- **Rule 2:** Chargers go with devices they charge.\nOK", cfg) == [
        "Group a phone with its case.",
        "Chargers go with devices they charge.",
    ]
    assert split_rules("Pair cameras with memory cards. Do you agree?", cfg) == ["Pair cameras with memory cards."]
    assert split_rules("", cfg) == []


def test_consolidation_merges_near_duplicates_and_counts_sessions():
    rows = pl.DataFrame(
        [
            {"domain": "electronic", "session_id": 1, "rules": ["Group a phone with its case", "Cables go with devices"],
             "error": None},
            {"domain": "electronic", "session_id": 2, "rules": ["Group a phone together with its case"], "error": None},
            {"domain": "electronic", "session_id": 3, "rules": ["ignored: this session failed"], "error": "no rule"},
        ]
    )
    rules = consolidate_rules(rows, RuleConfig())
    assert rules.columns == list(RULE_COLUMNS)
    assert rules["rule"].to_list() == ["Group a phone with its case", "Cables go with devices"]
    assert rules["support"].to_list() == [2, 1] and rules["session_ids"].to_list() == [[1, 2], [1]]
    assert rules["variants"][0].to_list() == ["Group a phone together with its case"]
    assert consolidate_rules(rows.head(0), RuleConfig()).height == 0


def test_distill_rules_end_to_end_on_real_sessions(stub, electronic_sessions):
    cfg = TeacherConfig(model="stub-teacher", max_tokens=64)
    with TeacherClient(cfg) as client:
        session_rules, rules = distill_rules(electronic_sessions, "electronic", RuleConfig(feedback_rounds=2), client)
    assert session_rules.schema == pl.Schema(SESSION_RULE_COLUMNS)
    assert session_rules["session_id"].to_list() == electronic_sessions.filter(pl.col("split") == "train")["session_id"].to_list()
    for row in session_rules.iter_rows(named=True):
        turns = row["conversation"]
        assert turns[0]["content"].startswith("A bundle can be") and "'product1':" in turns[0]["content"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert turns[-2]["content"] == RULES_QUESTION and turns[-1]["content"] == row["summary"]
        assert row["feedback_rounds"] == (len(turns) - 4) // 2 <= 2
        if row["feedback_rounds"]:
            assert turns[2]["content"].startswith("Here are some tips for the detected bundles")
        assert row["error"] is None and row["parse_failures"] == 0
        assert row["rules"] == ["Group a device with the accessories made for it.",
                                "Products of the same brand and type often form a bundle.",
                                "Group a device together with accessories made for it."]
        assert row["knowledge"].startswith("- Group a device")
    # near-duplicate wordings merge; every session supports both distinct rules
    assert rules["rule"].to_list() == ["Group a device with the accessories made for it.",
                                       "Products of the same brand and type often form a bundle."]
    assert rules["support"].to_list() == [4, 4] and rules["knowledge"].to_list() == rules["rule"].to_list()
    assert len(stub.answered) == sum(len(c) // 2 for c in session_rules["conversation"].to_list())


def test_garbage_answers_are_recorded_as_failures_and_never_stop_the_run(teacher_env, electronic_sessions, monkeypatch):
    with StubOpenAI(lambda messages: "}}} ### ??") as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(TeacherConfig(model="stub-teacher")) as client:
            session_rules, rules = distill_rules(electronic_sessions, "electronic", RuleConfig(feedback_rounds=1), client)
            assert client.progress().failures == 4 * 3  # two unreadable answers + no rules, per session
    assert session_rules.height == 4 and rules.height == 0
    assert session_rules["error"].to_list() == ["no rule of 4+ words in the summary"] * 4
    assert session_rules["parse_failures"].to_list() == [2] * 4
    assert session_rules["summary"].to_list() == ["}}} ### ??"] * 4  # the raw answer is kept
    assert session_rules["final_error_codes"].to_list() == [[5]] * 4
    assert session_rules["knowledge"].null_count() == 4


def test_rules_that_only_echo_the_prompts_are_dropped(teacher_env, electronic_sessions, monkeypatch):
    echo = "Each bundle must contain multiple products."  # a sentence of the first prompt
    with StubOpenAI(lambda messages: f"{echo}\nKeep cables with the devices they connect.") as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(TeacherConfig(model="stub-teacher")) as client:
            session_rules, _ = distill_rules(electronic_sessions.head(1), "electronic", RuleConfig(), client)
    assert session_rules["rules"].to_list() == [["Keep cables with the devices they connect."]]


def test_distill_rules_checks_its_input():
    with pytest.raises(ValueError, match="distill_rules: missing columns"):
        distill_rules(pl.DataFrame({"session_id": [1]}), "electronic", RuleConfig(), client=None)  # type: ignore[arg-type]
