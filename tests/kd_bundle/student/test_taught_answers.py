"""Every answer the student is taught or shown is one its grammar lets it write, on the real training splits.

For all three domains, every training session's SFT target (raw, with patterns or rules in the prompt, and after a
thought), every demonstration retrieval hands on (raw and thoughts, which the teacher is shown too) and the truth
the rule loop shows the teacher (format_bundles of the same bundle_positions; tests/kd_bundle/knowledge/test_rules.py
checks the loop sends it) must be accepted by that session's answer grammar (xgrammar's matcher, at the
default StudentConfig's bundle cap), and a reasoning line must fit the student's reasoning cap. On 7def1df, 96 of
623 Electronic raw targets passed: BundleRec lists most bundles' items in descending order.
"""

from __future__ import annotations

import os

import polars as pl
import pytest

from kd_bundle.config import DOMAINS, DataConfig, settings
from kd_bundle.data.sessions import load_sessions
from kd_bundle.student.grammar import answer_allowed, reasoning_fits
from kd_bundle.student.icl import ANSWER_MARKER, REASONING_MARKER, ICLConfig, build_sft_examples
from kd_bundle.student.model import StudentConfig, load_tokenizer
from kd_bundle.student.retrieval import RETRIEVED_SCHEMA, as_knowledge, raw_knowledge

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STUDENT = StudentConfig()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(STUDENT)


def teacher_like_thought(titles: list[str]) -> str:
    """A thought in the shape the teacher writes (THOUGHT_INSTRUCTION's steps, several lines, a blank one)."""
    products = "\n".join(f"- product{i}: {title[:60]} is used on its own." for i, title in enumerate(titles, 1))
    return (f"Step 1: what each product is.\n{products}\n\nStep 2: the user wants to equip one setup.\n"
            "Step 3: these products serve that intent together; the others do not.")


def _answer(completion: str, tokenizer) -> str:
    """The assistant turn without the template's end-of-turn text."""
    return completion.split(tokenizer.eos_token, 1)[0].rstrip("\n")


def _rejected(texts: dict[int, str], lengths: dict[int, int], reasoning: bool = False) -> list[int]:
    return [sid for sid, text in texts.items()
            if not answer_allowed(text, lengths[sid], STUDENT.max_bundles, reasoning=reasoning)]


def _lines(train: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """A retrieved frame giving every session one domain-level line of `fmt` (the prompt side of SFT)."""
    n = train.height
    return pl.DataFrame({"session_id": train["session_id"], "format": [fmt] * n, "neighbour_ids": [[]] * n,
                         "scores": [[]] * n, "knowledge": [[f"A {fmt} line: chargers go with phones."]] * n},
                        schema=RETRIEVED_SCHEMA)


@pytest.mark.slow
@pytest.mark.parametrize("domain", DOMAINS)
def test_every_taught_and_shown_answer_is_one_the_grammar_allows(domain, tokenizer) -> None:
    sessions = load_sessions(DataConfig(domain=domain), settings().data_root)
    train = sessions.filter(pl.col("split") == "train")
    lengths = dict(train.select("session_id", pl.col("item_ids").list.len()).iter_rows())

    for fmt in ("raw", "patterns", "rules"):  # raw: plain session -> bundles; the others carry lines in the prompt
        retrieved = None if fmt == "raw" else _lines(train, fmt)
        icl = ICLConfig(formats=() if fmt == "raw" else (fmt,), demonstrations=1, max_lines=10)
        examples = build_sft_examples(train, retrieved, None, tokenizer, icl, 2048)
        assert examples.height == train.height
        targets = {sid: _answer(c, tokenizer) for sid, c in examples.select("session_id", "completion").iter_rows()}
        assert _rejected(targets, lengths) == [], f"{domain} {fmt}: SFT targets the grammar forbids"

    thoughts = train.select("session_id", thought=pl.col("titles").map_elements(teacher_like_thought,
                                                                                 return_dtype=pl.String))
    examples = build_sft_examples(train, None, thoughts, tokenizer, ICLConfig(formats=()), 4096,
                                  reasoning_tokens=STUDENT.reasoning_tokens)
    assert examples.height == train.height, "a thought was longer than the student's reasoning cap"
    targets = {sid: _answer(c, tokenizer) for sid, c in examples.select("session_id", "completion").iter_rows()}
    assert _rejected(targets, lengths, reasoning=True) == [], f"{domain}: reasoning targets the grammar forbids"
    assert all(reasoning_fits(t, tokenizer, STUDENT.reasoning_tokens) for t in targets.values())

    shown = dict(raw_knowledge(train).iter_rows())  # what ICL prompts and the teacher's prompts carry
    answers = {sid: ANSWER_MARKER + text.rpartition(ANSWER_MARKER)[2] for sid, text in shown.items()}
    assert len(answers) == train.height and _rejected(answers, lengths) == [], f"{domain}: raw demonstrations"
    worked = dict(as_knowledge(thoughts, train).iter_rows())
    reasoned = {sid: REASONING_MARKER + text.partition(REASONING_MARKER)[2] for sid, text in worked.items()}
    assert len(reasoned) == train.height and _rejected(reasoned, lengths, reasoning=True) == [], \
        f"{domain}: thought demonstrations"

