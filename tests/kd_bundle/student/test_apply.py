"""`python -m kd_bundle generate` on real Electronic test sessions with their bundles removed: it answers them as the
grid's student stage would (same predictions as `predict_sessions`), in the file format the score CLI reads, with
an adapter folder, with retrieved knowledge, and with the best validated row of a results table; bad input is one
line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.__main__ import main
from kd_bundle.config import DataConfig, settings
from kd_bundle.data.new_sessions import read_new_sessions
from kd_bundle.data.sessions import load_sessions
from kd_bundle.evaluation.metrics import score_predictions
from kd_bundle.evaluation.predictions import read_predictions_jsonl
from kd_bundle.evaluation.results import knowledge_provenance, result_row
from kd_bundle.store import write_directory
from kd_bundle.student.choice import best_row
from kd_bundle.student.generate import predict_sessions
from kd_bundle.student.icl import ICLConfig, build_sft_examples
from kd_bundle.student.model import StudentConfig, load_tokenizer
from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge
from kd_bundle.student.training import SMOKE, train_student
from tests.kd_bundle.tiny_student import build_tiny_student, tiny_sessions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub
N_NEW = 3


@pytest.fixture(scope="module")
def electronic() -> pl.DataFrame:
    return load_sessions(DataConfig(domain="electronic"), settings().data_root)


@pytest.fixture(scope="module")
def truth(electronic) -> pl.DataFrame:
    """The sessions to answer: short real test sessions (their bundles are what the output is scored against)."""
    test = electronic.filter(pl.col("split") == "test")
    return test.filter(pl.col("item_ids").list.len() <= 4).head(N_NEW)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_student(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def student(tiny) -> StudentConfig:
    return StudentConfig(model=str(tiny), max_new_tokens=40, dtype="float32")


@pytest.fixture(scope="module")
def adapter(student, tmp_path_factory) -> Path:
    examples = build_sft_examples(tiny_sessions(), None, None, load_tokenizer(student), ICLConfig(formats=()), 1024)
    folder = tmp_path_factory.mktemp("trained") / "adapter"
    train_student(examples, student, SMOKE.model_copy(update={"quantization": "none"}), folder)
    return folder


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))  # the run's log and any stored artifact stay here
    return tmp_path / "store"


def _new_items(sessions: pl.DataFrame, path: Path, drop: tuple[str, ...] = ()) -> Path:
    """`sessions` as an items table without split or bundles: what a user has before any bundle exists."""
    items = (sessions.select("session_id", "item_ids", "titles", "categories")
             .explode("item_ids", "titles", "categories")
             .select("session_id", position=pl.int_range(1, pl.len() + 1).over("session_id"),
                     item_id="item_ids", title="titles", category="categories"))
    items = items.drop(drop)
    items.write_parquet(path) if path.suffix == ".parquet" else items.write_csv(path)
    return path


def _generate(capsys, *args: str) -> tuple[int, str]:
    code = main(["generate", *args])
    return code, capsys.readouterr().err


def test_base_student_answers_new_sessions_like_the_grid_and_the_score_cli_reads_them(
        truth, student, tmp_path, capsys) -> None:
    items = _new_items(truth, tmp_path / "new.csv")
    out = tmp_path / "bundles.jsonl"
    code, err = _generate(capsys, "--student", "base", "--model", student.model, "--sessions", str(items),
                          "--out", str(out), "--max-new-tokens", "40", "--progress-every", "2")
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["session_id"] for line in lines) == sorted(truth["session_id"].to_list())
    predicted = read_predictions_jsonl(out)
    items_of = dict(truth.select("session_id", "item_ids").iter_rows())
    for sid, bundles in predicted.select("session_id", "bundles").drop_nulls().iter_rows():
        assert all(set(b) <= set(items_of[sid]) for b in bundles)  # item ids, not product numbers
    # the grid's own path over the same sessions gives the same answers
    grid = predict_sessions(read_new_sessions(items), None, student, ICLConfig(formats=()))
    assert predicted.select("session_id", "bundles", "raw").equals(grid.select("session_id", "bundles", "raw"))
    assert "zero-shot base student" in err
    progress = [line for line in err.splitlines() if "sessions/s" in line]
    assert [line.split()[1] for line in progress] == ["2/3", "3/3"]
    # scored against the true bundles: directly, and by the score CLI against the whole test split
    scores = score_predictions(predicted, truth)
    assert scores["n_sessions"] == N_NEW and scores["n_scored"] + scores["n_failed"] == N_NEW
    assert main(["score", "--domain", "electronic", "--predictions", str(out)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n_missing"] == scored["n_sessions"] - N_NEW and scored["n_scored"] == scores["n_scored"]


def test_intents_are_written_one_per_bundle(truth, student, tmp_path, capsys) -> None:
    out = tmp_path / "bundles.jsonl"
    code, err = _generate(capsys, "--student", "base", "--model", student.model, "--intents", "--max-new-tokens", "60",
                          "--sessions", str(_new_items(truth, tmp_path / "new.csv")), "--out", str(out))
    assert code == 0, err
    answered = read_predictions_jsonl(out).drop_nulls("bundles")
    assert answered.height > 0
    for bundles, intents in answered.select("bundles", "intents").iter_rows():
        assert intents is not None and len(intents) == len(bundles) and all(i.strip() for i in intents)


def test_an_adapter_folder_is_applied_to_its_own_base(truth, student, adapter, tmp_path, capsys) -> None:
    items = _new_items(truth, tmp_path / "new.parquet")  # Parquet reads like CSV
    out = tmp_path / "bundles.jsonl"
    code, err = _generate(capsys, "--student", str(adapter), "--sessions", str(items), "--out", str(out))
    assert code == 0, err
    # no --model: the base (the tiny Llama, not the default SmolLM2) comes from the adapter's own student_config.json
    assert f"adapter {adapter}" in err and "prompt knowledge: none" in err
    grid = predict_sessions(read_new_sessions(items), None, student, ICLConfig(formats=()), adapter)
    predicted = read_predictions_jsonl(out)
    assert predicted.select("session_id", "bundles", "raw").equals(grid.select("session_id", "bundles", "raw"))


def test_icl_retrieves_the_nearest_training_sessions_as_the_grid_does(electronic, truth, student, tmp_path,
                                                                      capsys) -> None:
    items = _new_items(truth, tmp_path / "new.csv")
    out = tmp_path / "bundles.jsonl"
    code, err = _generate(capsys, "--student", "base", "--model", student.model, "--knowledge", "raw",
                          "--train", "electronic", "--retrieval", "tfidf", "--max-new-tokens", "40",
                          "--sessions", str(items), "--out", str(out))
    assert code == 0, err
    assert "from 623 training sessions" in err
    # the grid: one sessions frame of the training pool and the sessions to answer, retrieval over it
    frame = pl.concat([electronic.filter(pl.col("split") == "train"), read_new_sessions(items)], how="vertical_relaxed")
    cfg = RetrievalConfig(method="tfidf")
    embeddings = embed_sessions(frame, cfg)
    retrieved = retrieve_knowledge(frame, embeddings, build_index(embeddings, frame), {"raw": frame}, cfg)
    grid = predict_sessions(frame, retrieved, student, ICLConfig(formats=("raw",)))
    predicted = read_predictions_jsonl(out)
    same = ["session_id", "raw", "prompt_tokens"]
    assert predicted.select(same).equals(grid.select(same))
    assert (predicted["prompt_tokens"] > 400).all()  # three demonstrations are in the prompt


def test_best_row_is_the_lowest_validation_loss_never_a_test_score(truth, adapter, store, tmp_path, capsys) -> None:
    stored = write_directory(adapter, "adapter")
    metrics = dict(recall=0.5, coverage=0.5, strict_recall=0.5, strict_coverage=0.5, n_sessions=60, n_scored=60,
                   n_failed=0)
    rows = [  # the best test precision belongs to a row that has no validation loss
        result_row(domain="electronic", rq="rq1", method="student", knowledge_format="raw", utilization="icl",
                   precision=0.9, strict_precision=0.9, knowledge_sha256=knowledge_provenance([("sessions", "a" * 64)]),
                   **metrics),
        result_row(domain="electronic", rq="rq1", method="student", knowledge_format="rules", utilization="sft",
                   precision=0.6, strict_precision=0.6, valid_loss=0.9, valid_strict_precision=0.5,
                   adapter_sha256="b" * 64, **metrics),
        result_row(domain="electronic", rq="rq1", method="student", knowledge_format="raw", utilization="sft",
                   precision=0.3, strict_precision=0.3, valid_loss=0.4, valid_strict_precision=0.4,
                   adapter_sha256=stored.sha256, **metrics),
    ]
    results = tmp_path / "results.parquet"
    pl.concat(rows).write_parquet(results)
    row, rated = best_row(results)
    assert (row["row"], row["valid_loss"], rated) == (2, 0.4, 2)
    by_answers, _ = best_row(results, "valid_strict_precision")  # higher is better: the other adapter
    assert (by_answers["row"], by_answers["valid_strict_precision"]) == (1, 0.5)
    out = tmp_path / "bundles.jsonl"
    items = _new_items(truth, tmp_path / "n.csv")
    code, err = _generate(capsys, "--student", f"best:{results}", "--sessions", str(items), "--out", str(out))
    assert code == 0, err
    assert f"row 2 [electronic rq1 student raw sft all 1.0], adapter {stored.sha256[:12]}" in err
    assert read_predictions_jsonl(out).height == N_NEW
    for metric in ("strict_precision", "precision", "coverage"):
        code, err = _generate(capsys, "--student", f"best:{results}:{metric}", "--sessions", str(tmp_path / "n.csv"),
                              "--out", str(tmp_path / "x.jsonl"))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "test-split score" in err, err
    old = tmp_path / "old.parquet"  # a table written before rows recorded their adapter
    pl.read_parquet(results).drop("adapter_sha256", "knowledge_sha256").write_parquet(old)
    code, err = _generate(capsys, "--student", f"best:{old}", "--sessions", str(tmp_path / "n.csv"),
                          "--out", str(tmp_path / "x.jsonl"))
    assert code == 2 and "records no adapter_sha256" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("breakage, expected", [
    ("no title column", "missing column(s) ['title']"),
    ("one-item session", "has one item"),
    ("untitled item", "has no title"),
    ("repeated position", "has position 1 twice"),  # the loader's own checks (kd_bundle.data.checks)
])
def test_bad_input_is_one_line_naming_it(truth, tmp_path, capsys, breakage, expected) -> None:
    items = _new_items(truth, tmp_path / "new.csv", drop=("title",) if breakage == "no title column" else ())
    frame = pl.read_csv(items, infer_schema=False)
    if breakage == "one-item session":
        frame = pl.concat([frame, frame.head(1).with_columns(session_id=pl.lit("999999"))])
    second_row = pl.int_range(pl.len()) == 1
    if breakage == "untitled item":
        frame = frame.with_columns(title=pl.when(second_row).then(pl.lit("")).otherwise("title"))
    if breakage == "repeated position":
        frame = frame.with_columns(position=pl.when(second_row).then(pl.lit("1")).otherwise("position"))
    frame.write_csv(items)
    out = tmp_path / "bundles.jsonl"
    code, err = _generate(capsys, "--student", "base", "--sessions", str(items), "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err and str(items) in err
    if breakage != "no title column":
        assert "row" in err and ("999999" in err or str(frame["session_id"][1]) in err)
    assert not out.exists()


@pytest.mark.slow
def test_the_real_smollm2_base_answers_three_new_sessions(truth, tmp_path, capsys) -> None:
    out = tmp_path / "bundles.jsonl"
    code, err = _generate(capsys, "--student", "base", "--sessions", str(_new_items(truth, tmp_path / "new.csv")),
                          "--out", str(out))
    assert code == 0, err
    predicted = read_predictions_jsonl(out)
    assert predicted.height == N_NEW and predicted["bundles"].null_count() == 0  # the grammar: every answer parses
    assert "zero-shot base student 'smollm2'" in err


@pytest.mark.parametrize("flags, expected", [
    (("--knowledge", "raw"), "give --train"),
    (("--knowledge", "rules", "--train", "electronic"), "only the teacher distils"),
    (("--knowledge", "raw", "--train", "nowhere"), "neither a domain"),
])
def test_knowledge_without_its_source_is_refused_in_one_line(truth, tmp_path, capsys, flags, expected) -> None:
    code, err = _generate(capsys, "--student", "base", "--sessions", str(_new_items(truth, tmp_path / "new.csv")),
                          "--out", str(tmp_path / "bundles.jsonl"), *flags)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 2, err  # the student line, the error
    assert not (tmp_path / "bundles.jsonl").exists()
