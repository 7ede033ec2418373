"""Batched generation on a tiny random Llama: left padding changes nothing, answers parse into a predictions frame
with their cost, in both decodings (grammar and free)."""

from __future__ import annotations

import os

import polars as pl
import pytest

from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS
from kd_bundle.student.generate import _prediction, adapter_reasons, generate_texts, predict_sessions
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.model import StudentConfig, load_student
from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge
from tests.kd_bundle.tiny_student import build_tiny_student, tiny_sessions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> StudentConfig:
    return StudentConfig(model=str(build_tiny_student(tmp_path_factory.mktemp("tiny"))), max_new_tokens=48, batch_size=4,
                         dtype="float32")  # fp32: batched and one-at-a-time logits agree to the last bit


@pytest.mark.parametrize("decoding", ["free", "grammar"])
def test_batched_left_padded_generation_matches_one_prompt_at_a_time(student, decoding):
    import torch

    model, tokenizer = load_student(student)
    torch.manual_seed(1)
    with torch.no_grad():  # larger random weights: outputs differ from prompt to prompt, so the check has teeth
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.5)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": "phone case " * n}], tokenize=False,
                                             add_generation_prompt=True) for n in (1, 7, 3, 12, 2)]
    cfg = student.model_copy(update={"decoding": decoding, "max_new_tokens": 40})
    n_items = [2, 10, 3, 10, 4]
    batched = generate_texts(model, tokenizer, prompts, cfg, n_items=n_items)
    single = generate_texts(model, tokenizer, prompts, cfg.model_copy(update={"batch_size": 1}), n_items=n_items)
    assert batched == single
    assert len(set(batched)) >= (len(prompts) if decoding == "free" else 2)  # the short grammar answers may repeat


@pytest.mark.parametrize("decoding", ["free", "grammar"])
def test_the_shared_prefix_prefilled_once_changes_no_answer(student, decoding, monkeypatch):
    import torch

    from kd_bundle.student import prefix

    model, tokenizer = load_student(student)
    torch.manual_seed(2)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.5)
    rules = "Rules: a case goes with its phone; chargers go with the devices they charge. " * 3
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": rules + "phone case " * n}], tokenize=False,
                                             add_generation_prompt=True) for n in (1, 7, 3, 12, 2, 5)]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert prefix.shared_prefix_length(ids) >= prefix.MIN_SHARED_TOKENS  # the cache is really used below
    cfg = student.model_copy(update={"decoding": decoding, "max_new_tokens": 40, "batch_size": 4})
    n_items = [2, 10, 3, 10, 4, 6]
    cached = generate_texts(model, tokenizer, prompts, cfg, n_items=n_items)
    monkeypatch.setattr(prefix, "MIN_SHARED_TOKENS", 10**6)
    uncached = generate_texts(model, tokenizer, prompts, cfg, n_items=n_items)
    assert cached == uncached
    assert len(set(cached)) >= 2


def test_the_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    from kd_bundle.student.prefix import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0


def test_answers_are_parsed_after_the_marker_and_mapped_to_item_ids():
    items = ["A", "B", "C", "D"]
    text = "Reasoning: ['product1', 'product2'] are similar.\nBundles: {'bundle1': ['product1', 'product3', 'product1']}"
    assert _prediction(7, items, text) == {"session_id": 7, "bundles": [["A", "C"]], "intents": None, "raw": text}
    hallucinated = _prediction(7, items, "Bundles: {'bundle1': ['product2', 'product9']}")
    assert hallucinated["bundles"] is None and "product9" in hallucinated["raw"]
    assert _prediction(7, items, "I cannot tell.")["bundles"] is None


def test_icl_predictions_cover_every_test_session(student):
    sessions = tiny_sessions()
    cfg = RetrievalConfig(method="tfidf", k=2, tfidf_features=64)
    embeddings = embed_sessions(sessions, cfg)
    retrieved = retrieve_knowledge(sessions, embeddings, build_index(embeddings, sessions), {"raw": sessions}, cfg)
    predictions = predict_sessions(sessions, retrieved, student, ICLConfig(demonstrations=2))
    assert predictions.schema == pl.Schema(PREDICTION_COLUMNS)
    assert predictions["session_id"].to_list() == [7, 8]
    assert predictions["raw"].null_count() == 0
    assert predictions["bundles"].null_count() == 0  # under the grammar even random weights answer in bundles
    assert (predictions["prompt_tokens"] > 0).all() and (predictions["new_tokens"] > 0).all()
    free = predict_sessions(sessions, retrieved, student.model_copy(update={"decoding": "free"}), ICLConfig(demonstrations=2))
    assert free["raw"].null_count() == 0  # random weights rarely parse freely, but the raw text is always kept
    with pytest.raises(ValueError, match="no 'valid' sessions"):
        predict_sessions(sessions, retrieved, student, ICLConfig(), split="valid")
    with pytest.raises(ValueError, match="context window"):
        predict_sessions(sessions, retrieved, student.model_copy(update={"max_context": 64, "max_new_tokens": 64}),
                         ICLConfig())


def test_generation_stops_once_the_answer_is_closed():
    from kd_bundle.student.generate import answer_closed

    assert answer_closed("Bundles: {'bundle1': ['product1', 'product2']}")
    assert not answer_closed("Bundles: {'bundle1': ['product1', 'product2']")  # still open: keep going
    assert not answer_closed("Reasoning: a {set} of cases")  # braces in reasoning are not the answer
    assert answer_closed("Reasoning: a {set}\nBundles: [['product1', 'product3']]")
    assert answer_closed("{'bundle1': ['product}1']} and then rambling") and not answer_closed("{'b': 'x}'")


@pytest.mark.parametrize("decoding", ["free", "grammar"])
def test_the_prefill_is_part_of_the_parsed_answer(student, decoding):
    from kd_bundle.student.generate import predict_bundles

    student = student.model_copy(update={"decoding": decoding})
    model, tokenizer = load_student(student)
    sessions = tiny_sessions().filter(pl.col("split") == "test")
    prompts = pl.DataFrame({"session_id": [7, 8], "prompt": ["<|user|>\nhi</s>\n<|assistant|>\n"] * 2,
                            "prefill": ["Bundles: {'bundle1': ['product1', 'product2']}"] * 2})
    prefills = "Bundles: {'bundle1': ['product1', 'product2']}"
    predictions = predict_bundles(sessions, prompts, model, tokenizer, student)
    assert predictions["bundles"].to_list() == [[["I7_0", "I7_1"]], [["I8_0", "I8_1"]]]
    raw = predictions["raw"].to_list()
    assert all(r.startswith(prefills) and len(tokenizer(r[len(prefills):])["input_ids"]) <= 2 for r in raw)  # stopped at once
    assert predictions["new_tokens"].to_list() == [1, 1]


def test_a_reasoning_adapter_is_recognised_by_its_saved_sft_config(tmp_path):
    assert not adapter_reasons(None) and not adapter_reasons(tmp_path)
    (tmp_path / "sft_config.json").write_text('{"reasoning": true, "lora_r": 4}')
    assert adapter_reasons(tmp_path)


def test_cost_columns_survive_jsonl_and_are_null_where_a_file_lacks_them(student, tmp_path):
    from kd_bundle.evaluation.predictions import read_predictions_jsonl, write_predictions_jsonl
    from kd_bundle.student.generate import predict_bundles

    model, tokenizer = load_student(student)
    sessions = tiny_sessions().filter(pl.col("split") == "test")
    prompts = pl.DataFrame({"session_id": [7, 8], "prompt": ["<|user|>\nhi</s>\n<|assistant|>\n"] * 2,
                            "prefill": [""] * 2})
    predictions = predict_bundles(sessions, prompts, model, tokenizer, student)
    assert predictions.select("prompt_tokens", "new_tokens", "seconds").null_count().sum_horizontal().item() == 0
    write_predictions_jsonl(predictions, tmp_path / "p.jsonl")
    assert read_predictions_jsonl(tmp_path / "p.jsonl").equals(predictions)
    (tmp_path / "old.jsonl").write_text('{"session_id": 7, "bundles": [["I7_0", "I7_1"]]}\n')
    old = read_predictions_jsonl(tmp_path / "old.jsonl")
    assert old.schema == pl.Schema(PREDICTION_COLUMNS) and old["new_tokens"].to_list() == [None]
    (tmp_path / "bad.jsonl").write_text('{"session_id": 7, "bundles": null, "seconds": -1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: seconds is -1; expected a non-negative number"):
        read_predictions_jsonl(tmp_path / "bad.jsonl")
