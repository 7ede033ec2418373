"""ICL prompts and SFT examples: knowledge sections, context fitting, never a silent overflow."""

from __future__ import annotations

import logging
import os

import polars as pl
import pytest

from kd_bundle.data.prompts import DETECT_INSTRUCTION, format_session
from kd_bundle.student.icl import (
    ANSWER_MARKER,
    ICLConfig,
    PromptTooLong,
    answer_part,
    build_prompts,
    build_sft_examples,
    fit_prompt,
    user_message,
)
from kd_bundle.student.retrieval import RETRIEVED_SCHEMA
from tests.kd_bundle.tiny_student import build_tiny_student, tiny_sessions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(build_tiny_student(tmp_path_factory.mktemp("tiny"))))


@pytest.fixture(scope="module")
def sessions() -> pl.DataFrame:
    return tiny_sessions()


@pytest.fixture(scope="module")
def retrieved(sessions) -> pl.DataFrame:
    """Hand-made retrieval: three demonstrations and two rules per session, plus two pattern lines."""
    rows = []
    for sid in sessions["session_id"].to_list():
        others = [n for n in (1, 2, 3) if n != sid]
        rows.append((sid, "raw", others, [0.9, 0.5], [f"Products: demo {n}\nBundles: {{}}" for n in others]))
        rows.append((sid, "rules", [4, 5], [0.8, 0.4], ["Cases go with protectors.", "Knives go with boards."]))
        rows.append((sid, "patterns", [], [], ["Phones and Accessories are often bundled.", "Kitchen and Tools too."]))
    return pl.DataFrame(rows, schema=RETRIEVED_SCHEMA, orient="row")


def test_without_knowledge_the_prompt_is_aicls_zero_shot_request(sessions, tokenizer):
    titles = sessions["titles"][0].to_list()
    assert user_message(titles, [], 3, 10) == DETECT_INSTRUCTION.replace("{session}", format_session(titles))
    prompts = build_prompts(sessions, None, tokenizer, ICLConfig(formats=()), 4000)
    assert prompts["demonstrations"].sum() == 0 and prompts["prompt"][0].startswith("<|user|>\n")
    assert prompts["prompt"][0].endswith("<|assistant|>\n")


def test_sections_follow_the_configured_formats_in_order(sessions, retrieved, tokenizer):
    cfg = ICLConfig(formats=("patterns", "rules", "raw"), demonstrations=1)
    prompt = build_prompts(sessions.head(1), retrieved, tokenizer, cfg, 4000)["prompt"][0]
    assert prompt.index("### Frequent category patterns") < prompt.index("### Rules") < prompt.index("### Examples")
    assert "- Phones and Accessories are often bundled." in prompt and "- Kitchen and Tools too." in prompt
    assert "1. Cases go with protectors." in prompt and "Knives go with boards" not in prompt  # 1 demonstration
    assert prompt.count("Products: demo") == 1


def test_the_prompt_fits_the_window_by_dropping_demonstrations(sessions, retrieved, tokenizer, caplog):
    cfg = ICLConfig(formats=("raw", "rules"), demonstrations=2)
    full = build_prompts(sessions, retrieved, tokenizer, cfg, 4000)
    assert full["demonstrations"].to_list() == [2] * sessions.height
    budget = int(full["prompt_tokens"].min()) - 1
    with caplog.at_level(logging.WARNING, logger="kd_bundle.student.icl"):
        fitted = build_prompts(sessions, retrieved, tokenizer, cfg, budget)
    assert (fitted["prompt_tokens"] <= budget).all()
    assert fitted["demonstrations"].max() < 2
    assert "dropped demonstrations" in caplog.text


def test_lines_go_after_demonstrations_and_an_unfittable_session_raises(sessions, retrieved, tokenizer):
    titles = sessions["titles"][0].to_list()
    by_format = {f: (f, f != "patterns", k) for f, k in retrieved.filter(pl.col("session_id") == 1)
                 .select("format", "knowledge").iter_rows()}
    sections = [by_format["patterns"], by_format["raw"]]
    bare = fit_prompt(titles, [], tokenizer, 2, 2, 10_000).tokens
    fitted = fit_prompt(titles, sections, tokenizer, 2, 2, bare + 5)
    assert (fitted.demonstrations, fitted.lines) == (0, 0) and fitted.tokens == bare
    with pytest.raises(PromptTooLong, match="without any knowledge"):
        fit_prompt(titles, sections, tokenizer, 2, 2, bare - 1)


def test_a_format_that_was_not_retrieved_is_an_error(sessions, retrieved, tokenizer):
    with pytest.raises(ValueError, match=r"\['thoughts'\] not retrieved"):
        build_prompts(sessions, retrieved, tokenizer, ICLConfig(formats=("thoughts",)), 4000)
    with pytest.raises(ValueError, match="no retrieved knowledge"):
        build_prompts(sessions, None, tokenizer, ICLConfig(formats=("raw",)), 4000)


def test_sft_examples_put_knowledge_in_the_input_and_thoughts_before_the_answer(sessions, retrieved, tokenizer):
    thoughts = pl.DataFrame({"session_id": [1, 2, 7], "thought": ["Cases protect phones.", "Knives need boards.", "x"]})
    cfg = ICLConfig(formats=("rules",), demonstrations=1)
    examples = build_sft_examples(sessions, retrieved, thoughts, tokenizer, cfg, 2048)
    assert examples["session_id"].to_list() == [1, 2]  # train split, sessions with a thought only
    first = examples.row(0, named=True)
    assert "Cases go with protectors." in first["prompt"] and first["prompt"].endswith("<|assistant|>\n")
    assert first["completion"].startswith("Reasoning: Cases protect phones.\n" + ANSWER_MARKER)
    assert first["completion"].endswith("</s>\n")  # the template's end of turn: the student learns to stop
    plain = build_sft_examples(sessions, None, None, tokenizer, ICLConfig(formats=()), 2048)
    assert plain.height == 6 and plain["completion"][0] == "Bundles: {'bundle1': ['product1', 'product2'], " \
        "'bundle2': ['product2', 'product3']}</s>\n"


def test_answer_part_skips_reasoning_that_quotes_products():
    text = "Reasoning: ['product1', 'product2'] look alike.\nBundles: {'bundle1': ['product1', 'product3']}"
    assert answer_part(text).strip() == "{'bundle1': ['product1', 'product3']}"
    assert answer_part("{'bundle1': ['product2']}") == "{'bundle1': ['product2']}"


def test_a_prefill_starts_the_answer_and_counts_against_the_budget(sessions, retrieved, tokenizer):
    prefill = "Bundles: {'bundle1': ['product"
    plain = build_prompts(sessions.head(1), retrieved, tokenizer, ICLConfig(formats=("raw",)), 4000)
    primed = build_prompts(sessions.head(1), retrieved, tokenizer, ICLConfig(formats=("raw",), prefill=prefill), 4000)
    assert primed["prompt"][0] == plain["prompt"][0] + prefill and primed["prefill"][0] == prefill
    assert primed["prompt_tokens"][0] > plain["prompt_tokens"][0]
