"""The round trip that proves train -> prompt -> grammar -> parse -> score is one chain, whatever the model's size.

SFT: an adapter overfits 16 real Electronic training sessions (loss near 0), then decodes those same sessions
through the same prompts, the grammar, the parser and the scorer: at least 90% must come back exactly (as sets of
bundles). Raw SFT, SFT with rules in the prompt and reasoning SFT (teacher-shaped multi-line thoughts). The student
is a tiny random Llama with a tokenizer trained on these prompts (tests/kd_bundle/tiny_student.py): the shipped
SmolLM2 needs ~13 min for the same overfit on 2 cores, and what is proven is the chain, not the model.
ICL: the shipped SmolLM2, shown the session itself as its only demonstration, copies the answer in most sessions.

On 7def1df all of them fail: the answers taught and shown listed products in descending order, which the grammar
forbids, so a student that learnt them perfectly could not write them.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.config import DataConfig, settings
from kd_bundle.data.prompts import bundle_positions
from kd_bundle.data.sessions import load_sessions
from kd_bundle.evaluation.metrics import score_predictions
from kd_bundle.student.generate import predict_sessions
from kd_bundle.student.icl import ICLConfig, answer_text, user_message
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.retrieval import RETRIEVED_SCHEMA, raw_knowledge
from kd_bundle.student.training import SFTConfig, train_adapter
from tests.kd_bundle.tiny_student import build_tiny_student

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RULES = ["Products of one brand that fit each other form a bundle.",
         "A device and its accessories (case, cable, charger) form a bundle.",
         "Two alternatives of the same kind of product form a bundle."]
# Overfitting is the point here, so no validation split picks an earlier step.
OVERFIT = SFTConfig(max_steps=300, warmup_ratio=5 / 300, valid_sessions=0, learning_rate=5e-3, lora_r=16, lora_alpha=32,
                    lora_dropout=0.0, quantization="none", gradient_checkpointing=False, batch_tokens=32768,
                    max_batch_size=16)


@pytest.fixture(scope="module")
def sessions() -> pl.DataFrame:
    """16 real training sessions of 4-7 products (shorter ones leave the grammar little choice), lowest ids first."""
    frame = load_sessions(DataConfig(domain="electronic"), settings().data_root)
    return (frame.filter((pl.col("split") == "train") & pl.col("item_ids").list.len().is_between(4, 7))
            .sort("session_id").head(16))


def _thoughts(sessions: pl.DataFrame) -> pl.DataFrame:
    """Teacher-shaped thoughts (several lines, a blank one), short enough for a tiny model to learn by heart: the
    steps of THOUGHT_INSTRUCTION around the session's true intents."""
    def thought(intents: list[str]) -> str:
        return ("Step 1: each product is described by its title.\n\nStep 2: the user wants "
                + "; ".join(intents) + ".\nStep 3: these products serve that intent together.")
    return sessions.select("session_id", thought=pl.col("intents").map_elements(thought, return_dtype=pl.String))


def _rules(sessions: pl.DataFrame) -> pl.DataFrame:
    """Consolidated rules, the same lines for every session (the retrieved frame's domain-level shape)."""
    n = sessions.height
    return pl.DataFrame({"session_id": sessions["session_id"], "format": ["rules"] * n, "neighbour_ids": [[]] * n,
                         "scores": [[]] * n, "knowledge": [RULES] * n}, schema=RETRIEVED_SCHEMA)


@pytest.fixture(scope="module")
def tiny(sessions, tmp_path_factory) -> StudentConfig:
    """A tiny random student whose tokenizer knows these sessions' prompts and answers, thoughts included."""
    thoughts = dict(_thoughts(sessions).iter_rows())
    texts = []
    for row in sessions.iter_rows(named=True):
        positions = bundle_positions(row["bundles"], row["item_ids"])
        texts += [user_message(row["titles"], [("rules", False, RULES)], 0, len(RULES)),
                  answer_text(positions, thoughts[row["session_id"]])]
    folder = build_tiny_student(tmp_path_factory.mktemp("round-trip"), texts=texts, vocab_size=2000,
                                embedding_std=0.3)
    return StudentConfig(model=str(folder), dtype="float32", batch_size=8)


def _exact(predictions: pl.DataFrame, sessions: pl.DataFrame) -> int:
    truth = {sid: {frozenset(b) for b in bundles}
             for sid, bundles in sessions.select("session_id", "bundles").iter_rows()}
    return sum({frozenset(b) for b in (bundles or [])} == truth[sid]
               for sid, bundles in predictions.select("session_id", "bundles").iter_rows())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["raw", "rules", "reasoning"])
def test_an_overfit_adapter_gives_back_what_it_was_taught(variant, sessions, tiny, tmp_path) -> None:
    knowledge = ICLConfig(formats=("rules",) if variant == "rules" else (), demonstrations=1, max_lines=10)
    steps = 400 if variant == "reasoning" else 300  # a thought is ~40 more tokens to learn by heart
    sft = OVERFIT.model_copy(update={"knowledge": knowledge, "reasoning": variant == "reasoning", "max_steps": steps,
                                     "warmup_ratio": 5 / steps})  # 5 warm-up steps whatever the run's length
    retrieved = _rules(sessions) if variant == "rules" else None
    thoughts = _thoughts(sessions) if variant == "reasoning" else None
    result = train_adapter(sessions, retrieved, thoughts, tiny, sft, tmp_path / "adapter")
    assert result.examples == sessions.height and result.losses[-1] < 0.1, result.losses[-10:]

    as_test = sessions.with_columns(split=pl.lit("test"))  # decoded as the grid decodes its test split
    predictions = predict_sessions(as_test, retrieved, tiny, knowledge, tmp_path / "adapter")
    if variant == "reasoning":
        assert predictions["raw"].str.starts_with("Reasoning: Step 1:").all(), predictions["raw"][0]
    assert _exact(predictions, sessions) >= 15, predictions.select("session_id", "raw").rows()
    scores = score_predictions(predictions, as_test)
    assert scores["n_scored"] == sessions.height and scores["strict_precision"] >= 0.9


@pytest.mark.slow
def test_the_student_copies_a_demonstration_of_the_session_itself(sessions) -> None:
    student = StudentConfig(max_new_tokens=96, batch_size=4)
    as_test = sessions.with_columns(split=pl.lit("test"))
    own = raw_knowledge(sessions)  # the session's own products and true bundles: only ever in this test
    retrieved = pl.DataFrame({"session_id": own["session_id"], "format": ["raw"] * own.height,
                              "neighbour_ids": [[sid] for sid in own["session_id"]], "scores": [[1.0]] * own.height,
                              "knowledge": [[text] for text in own["knowledge"]]}, schema=RETRIEVED_SCHEMA)
    shown = predict_sessions(as_test, retrieved, student, ICLConfig(formats=("raw",), demonstrations=1))
    alone = predict_sessions(as_test, None, student, ICLConfig(formats=()))
    copied, zero_shot = _exact(shown, sessions), _exact(alone, sessions)
    precision = {name: score_predictions(p, as_test)["strict_precision"] for name, p in (("shown", shown),
                                                                                           ("alone", alone))}
    # SmolLM2-135M copies 9 of 16 exactly here; where it does not, it mostly stops a bundle early
    assert copied > sessions.height // 2 and copied >= zero_shot + 5, (copied, zero_shot)
    assert precision["shown"] >= 0.75 and precision["shown"] >= precision["alone"] + 0.3, precision


def test_tiny_round_trip_student_tokenizes_its_prompts_into_words(tiny) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    answer = "Bundles: {'bundle1': ['product1', 'product3']}"
    assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) < len(answer) / 2
    assert Path(tiny.model, "config.json").exists()
