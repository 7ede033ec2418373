"""Rules by self-reflection: AICL's error typing, feedback turns, rule splitting and consolidation, end to end."""

from __future__ import annotations

import polars as pl
import pytest

from kd_bundle.data.parsing import ParsedBundles
from kd_bundle.data.prompts import (
    ADJUST_INSTRUCTION,
    INTENT_INSTRUCTION,
    RULES_QUESTION,
    bundle_positions,
    format_bundles,
)
from kd_bundle.knowledge.rules import (
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
from tests.kd_bundle.openai_stub import (  # noqa: F401
    StubOpenAI,
    bundle_teacher,
    electronic_sessions,
    stub,
    teacher_env,
)

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


def test_distill_rules_follows_aicls_conversation_on_real_sessions(stub, electronic_sessions):
    cfg = TeacherConfig(model="stub-teacher", max_tokens=64)
    with TeacherClient(cfg) as client:
        session_rules, rules = distill_rules(electronic_sessions, "electronic", RuleConfig(), client)
    assert session_rules.schema == pl.Schema(SESSION_RULE_COLUMNS)
    train = electronic_sessions.filter(pl.col("split") == "train")
    assert session_rules["session_id"].to_list() == train["session_id"].to_list()
    explained = 0
    for row, session in zip(session_rules.iter_rows(named=True), train.iter_rows(named=True)):
        turns, steps = row["conversation"], row["steps"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * len(steps)
        assert turns[0]["content"].startswith("A bundle can be") and "'product1':" in turns[0]["content"]
        # self-correction: intents, then adjust; the stub's adjusted bundles repeat the first ones, so AICL stops early
        assert steps[:3] == ["detect", "intents", "adjust"] and "regenerate-intents" not in steps
        assert turns[2]["content"] == INTENT_INSTRUCTION and turns[4]["content"] == ADJUST_INSTRUCTION
        assert row["self_corrected"] is False
        assert row["feedback_rounds"] == steps.count("feedback") <= 4
        if row["feedback_rounds"]:
            assert turns[6]["content"].startswith("Here are some tips for the detected bundles")
        truth = bundle_positions(session["bundles"], session["item_ids"])
        assert row["first_bundles"] == [[1, 2]]
        assert row["first_precision"] == (1.0 if any({1, 2} <= set(t) for t in truth) else 0.0)
        assert row["first_error_codes"] == type_errors(ParsedBundles([[1, 2]]), truth)
        first_wrong = row["first_error_codes"] != [0] or len(truth) > 1
        assert ("explain" in steps) == first_wrong
        if first_wrong:
            explained += 1
            explain = turns[2 * steps.index("explain")]["content"]
            assert format_bundles(truth) in explain and "causes of your errors" in explain
        assert steps[-1] == "rules" and turns[-2]["content"] == RULES_QUESTION and turns[-1]["content"] == row["summary"]
        assert row["error"] is None and row["parse_failures"] == 0
        assert row["rules"] == ["Group a device with the accessories made for it.",
                                "Products of the same brand and type often form a bundle.",
                                "Group a device together with accessories made for it."]
        assert row["knowledge"].startswith("- Group a device")
    assert explained > 0  # real sessions where the stub's first answer is wrong
    # near-duplicate wordings merge; every session supports both distinct rules
    assert rules["rule"].to_list() == ["Group a device with the accessories made for it.",
                                       "Products of the same brand and type often form a bundle."]
    assert rules["support"].to_list() == [4, 4] and rules["knowledge"].to_list() == rules["rule"].to_list()
    assert len(stub.answered) == sum(len(c) // 2 for c in session_rules["conversation"].to_list())


def test_a_changed_adjustment_regenerates_intents_and_every_step_can_be_switched_off(teacher_env, electronic_sessions,
                                                                                    monkeypatch):
    def teacher(messages):
        last = messages[-1]["content"]
        if last == ADJUST_INSTRUCTION:
            return "{'bundle1': ['product2', 'product3']}"
        return bundle_teacher(messages)

    session = electronic_sessions.filter(pl.col("split") == "train").head(1)
    with StubOpenAI(teacher) as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(TeacherConfig(model="stub-teacher")) as client:
            full, _ = distill_rules(session, "electronic", RuleConfig(feedback_rounds=0, explain_errors=False), client)
            bare, _ = distill_rules(session, "electronic", RuleConfig(self_correction=False, feedback_rounds=0,
                                                                      explain_errors=False), client)
    assert full["steps"][0].to_list() == ["detect", "intents", "adjust", "regenerate-intents", "rules"]
    assert full["self_corrected"][0] is True and full["final_bundles"][0].to_list() == [[2, 3]]
    assert full["first_bundles"][0].to_list() == [[1, 2]]  # the first answer, not the adjusted one
    assert bare["steps"][0].to_list() == ["detect", "rules"] and len(bare["conversation"][0]) == 4


def test_garbage_answers_are_recorded_as_failures_and_never_stop_the_run(teacher_env, electronic_sessions, monkeypatch):
    with StubOpenAI(lambda messages: "}}} ### ??") as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(TeacherConfig(model="stub-teacher")) as client:
            session_rules, rules = distill_rules(electronic_sessions, "electronic", RuleConfig(feedback_rounds=1), client)
            assert client.progress().failures == 4 * 4  # detect, adjust, feedback unreadable + no rules, per session
    assert session_rules.height == 4 and rules.height == 0
    assert session_rules["error"].to_list() == ["no rule of 4+ words in the summary"] * 4
    assert session_rules["parse_failures"].to_list() == [3] * 4
    assert session_rules["summary"].to_list() == ["}}} ### ??"] * 4  # the raw answer is kept
    assert session_rules["final_error_codes"].to_list() == [[5]] * 4
    assert session_rules["first_error_codes"].to_list() == [[5]] * 4
    assert session_rules["first_precision"].to_list() == [0.0] * 4
    # the repeated garbage stops the self-correction early; the explanation is still asked (every answer was wrong)
    assert session_rules["steps"][0].to_list() == ["detect", "intents", "adjust", "feedback", "explain", "rules"]
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
