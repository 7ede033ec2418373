"""Constrained decoding on a tiny random Llama: every sampled answer parses into bundles of the session's own products;
the same model without the constraint does not parse; a reasoning student writes a capped line, then the answer."""

from __future__ import annotations

import os

import polars as pl
import pytest

from kd_bundle.data.parsing import parse_bundles
from kd_bundle.data.prompts import DETECT_INSTRUCTION, format_session
from kd_bundle.student.generate import predict_bundles
from kd_bundle.student.grammar import answer_grammar, grammar_book
from kd_bundle.student.icl import chat_prompt
from kd_bundle.student.model import StudentConfig, load_student
from tests.kd_bundle.tiny_student import build_tiny_student

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub

LENGTHS = (2, 10, 10, 2, 5)  # one batch: sessions of 2 and 10 products, prompts of different lengths
SEEDS = range(6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = StudentConfig(model=str(build_tiny_student(tmp_path_factory.mktemp("tiny"))), dtype="float32",
                        max_new_tokens=160, batch_size=len(LENGTHS), temperature=1.0)
    model, tokenizer = load_student(cfg)
    return cfg, model, tokenizer, {k: v.clone() for k, v in model.state_dict().items()}


def _randomised(tiny, seed: int):
    """The tiny model with large random weights (seeded): sampling then wanders all over the vocabulary."""
    import torch

    _, model, tokenizer, original = tiny
    model.load_state_dict(original)
    torch.manual_seed(seed)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.5)
    torch.manual_seed(seed)  # and the sampling itself
    return model, tokenizer


def _batch(tokenizer, prefill: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    titles = ["phone case black", "usb charger cable", "wireless earbuds", "screen protector glass", "phone stand"] * 2
    ids = list(range(1, len(LENGTHS) + 1))
    sessions = pl.DataFrame({"session_id": ids, "item_ids": [[f"S{s}_{i}" for i in range(n)] for s, n in zip(ids, LENGTHS)]})
    users = [DETECT_INSTRUCTION.replace("{session}", format_session(titles[:n])) for n in LENGTHS]
    prompts = pl.DataFrame({"session_id": ids, "prompt": [chat_prompt(tokenizer, u) + prefill for u in users],
                            "prefill": [prefill] * len(ids)})
    return sessions, prompts


def _assert_bundles_of_the_session(predictions: pl.DataFrame, sessions: pl.DataFrame, max_bundles: int) -> None:
    items = dict(sessions.select("session_id", "item_ids").iter_rows())
    for sid, bundles, raw in predictions.select("session_id", "bundles", "raw").iter_rows():
        assert bundles is not None, f"session {sid} did not parse: {raw!r}"
        assert 1 <= len(bundles) <= max_bundles
        for bundle in bundles:
            assert len(bundle) >= 2 and len(set(bundle)) == len(bundle) and set(bundle) <= set(items[sid]), raw


def test_the_grammar_allows_exactly_bundles_of_distinct_session_products(tiny):
    _, model, tokenizer, _ = tiny
    book = grammar_book(tokenizer, model.config.vocab_size)

    def allowed(answer: str, n: int, intents: bool = False, reasoning: bool = False) -> bool:
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(book.grammar(n, 2, intents, reasoning))
        return matcher.accept_string(answer) and matcher.is_completed()

    good = "Bundles: {'bundle1': ['product1', 'product3', 'product10'], 'bundle2': ['product4', 'product9']}"
    assert allowed(good, 10) and parse_bundles(good, 10).bundles == [[1, 3, 10], [4, 9]]
    assert allowed("Bundles: {'bundle1': ['product1', 'product2']}", 2)
    assert not allowed("Bundles: {'bundle1': ['product1', 'product3']}", 2)  # product3 is not in a 2-item session
    assert not allowed("Bundles: {'bundle1': ['product2', 'product2']}", 10)  # one product twice
    assert not allowed("Bundles: {'bundle1': ['product4']}", 10)  # a bundle of one
    assert not allowed("Bundles: {'bundle1': ['product1', 'product2'], 'bundle2': ['product1', 'product2'], "
                       "'bundle3': ['product1', 'product2']}", 10)  # more than max_bundles = 2
    assert not allowed("Bundles: {}", 10)  # the parser reads no bundle from an empty dict
    with_intent = "Bundles: {'bundle1': {'products': ['product2', 'product5'], 'intent': 'charge the phone'}}"
    assert allowed(with_intent, 5, intents=True)
    assert parse_bundles(with_intent, 5).intents == ["charge the phone"]
    assert allowed("Reasoning: a case and a charger.\nBundles: {'bundle1': ['product1', 'product2']}", 2, reasoning=True)
    with pytest.raises(ValueError, match="no bundle of 2 distinct"):
        answer_grammar(1, 3)


def test_constrained_sampling_always_yields_parsable_bundles_of_the_sessions_items(tiny):
    cfg = tiny[0]
    for seed in SEEDS:
        model, tokenizer = _randomised(tiny, seed)
        sessions, prompts = _batch(tokenizer, "Bundles:")
        predictions = predict_bundles(sessions, prompts, model, tokenizer, cfg)
        _assert_bundles_of_the_session(predictions, sessions, cfg.max_bundles)
        assert predictions["raw"].str.starts_with("Bundles: {").all()
    compiled = grammar_book(tokenizer, model.config.vocab_size).compiled
    assert {n for n, *_ in compiled} >= set(LENGTHS)  # one grammar per session length, not per row
    assert sum(1 for n, *_ in compiled if n == 10) <= 2  # answer-only and (another test's) reasoning form at most


def test_near_the_token_cap_a_row_closes_its_answer_instead_of_being_cut(tiny):
    cfg = tiny[0].model_copy(update={"max_new_tokens": 64})  # far below 3 bundles of 10 products, char by char
    for seed in SEEDS:
        model, tokenizer = _randomised(tiny, seed)
        sessions, prompts = _batch(tokenizer, "Bundles:")
        predictions = predict_bundles(sessions, prompts, model, tokenizer, cfg)
        _assert_bundles_of_the_session(predictions, sessions, cfg.max_bundles)
        assert (predictions["new_tokens"] <= cfg.max_new_tokens).all()


def test_without_the_constraint_the_same_sampling_does_not_parse(tiny):
    cfg = tiny[0].model_copy(update={"decoding": "free", "max_new_tokens": 60})
    frames = []
    for seed in SEEDS:
        model, tokenizer = _randomised(tiny, seed)
        sessions, prompts = _batch(tokenizer, "Bundles:")
        frames.append(predict_bundles(sessions, prompts, model, tokenizer, cfg))
    predictions = pl.concat(frames)
    # The tolerant parser may find a stray "[3]" in noise, but never an answer of real bundles: the constraint,
    # not luck, makes every answer of the test above parse.
    assert predictions["bundles"].is_not_null().sum() <= predictions.height // 10
    valid = predictions.filter(pl.col("bundles").list.eval(pl.element().list.len() >= 2).list.all())
    assert valid.filter(pl.col("bundles").list.len() > 0).height == 0, valid["raw"].to_list()


def test_greedy_constrained_answers_stop_at_the_closing_brace_and_record_their_cost(tiny):
    cfg = tiny[0].model_copy(update={"temperature": 0.0, "batch_size": 2})
    model, tokenizer = _randomised(tiny, 3)
    sessions, prompts = _batch(tokenizer, "Bundles:")
    predictions = predict_bundles(sessions, prompts, model, tokenizer, cfg)
    _assert_bundles_of_the_session(predictions, sessions, cfg.max_bundles)
    assert predictions["raw"].str.ends_with("}").all()  # no end-of-turn step, no rambling after the answer
    for prompt, raw, prompt_tokens, new_tokens in predictions.join(prompts, on="session_id").select(
        "prompt", "raw", "prompt_tokens", "new_tokens"
    ).iter_rows():
        assert prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        # the grammar may spell the answer in more (smaller) tokens than the tokenizer would; never in fewer than
        # one token per 16 characters, nor past the cap
        assert len(raw) / 16 <= new_tokens <= cfg.max_new_tokens
    assert (predictions["seconds"] > 0).all() and predictions["seconds"].n_unique() <= 3  # one share per batch of 2


def test_a_reasoning_student_writes_a_capped_line_then_a_parsable_answer(tiny):
    cfg = tiny[0].model_copy(update={"reasoning_tokens": 12})
    for seed in SEEDS[:3]:
        model, tokenizer = _randomised(tiny, seed)
        sessions, prompts = _batch(tokenizer, "")
        predictions = predict_bundles(sessions, prompts, model, tokenizer, cfg, reasoning=True)
        _assert_bundles_of_the_session(predictions, sessions, cfg.max_bundles)
        for raw in predictions["raw"].to_list():
            thought, _, answer = raw.partition("\n")
            assert thought.startswith("Reasoning: ") and len(thought) > len("Reasoning: ") and answer.startswith("Bundles: {")
            assert len(tokenizer(thought, add_special_tokens=False)["input_ids"]) <= cfg.reasoning_tokens + 1


def test_intents_are_generated_in_a_form_the_parser_reads(tiny):
    cfg = tiny[0].model_copy(update={"intents": True, "max_new_tokens": 240})
    model, tokenizer = _randomised(tiny, 1)
    sessions, prompts = _batch(tokenizer, "Bundles:")
    predictions = predict_bundles(sessions, prompts, model, tokenizer, cfg)
    _assert_bundles_of_the_session(predictions, sessions, cfg.max_bundles)
    for bundles, intents in predictions.select("bundles", "intents").iter_rows():
        assert intents is not None and len(intents) == len(bundles) and all(1 <= len(i.split()) <= 5 for i in intents)


def test_a_prefill_the_grammar_does_not_allow_is_a_clear_error(tiny):
    cfg = tiny[0]
    model, tokenizer = _randomised(tiny, 0)
    sessions, prompts = _batch(tokenizer, "Answer: [")
    with pytest.raises(ValueError, match="prefill 'Answer: \\[' is not the start of an answer"):
        predict_bundles(sessions, prompts, model, tokenizer, cfg)
