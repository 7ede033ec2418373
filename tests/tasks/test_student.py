"""Student tasks through `.fn`: each writes one ref into the store, and the same inputs give the same content hash."""

from __future__ import annotations

import os

import polars as pl

from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS
from kd_bundle.report.costs import read_train_stats
from kd_bundle.store import read_artifact, write_artifact
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.retrieval import RetrievalConfig
from kd_bundle.student.training import SMOKE, SFTConfig
from tasks.student import embed_sessions, index_sessions, retrieve_knowledge, student_predict, train_adapter
from tests.kd_bundle.tiny_student import build_tiny_student, tiny_sessions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub


def test_embed_retrieve_train_predict_write_refs(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    model = StudentConfig(model=str(build_tiny_student(tmp_path / "tiny")), max_new_tokens=8)
    sessions = write_artifact(tiny_sessions(), "sessions")
    rules = write_artifact(pl.DataFrame({"session_id": [1, 2, 3], "knowledge": ["- a", "- b", "- c"]}), "session_rules")
    cfg = RetrievalConfig(method="tfidf", k=2, tfidf_features=64)

    embeddings = embed_sessions.fn(sessions, cfg)
    index = index_sessions.fn(sessions, embeddings)
    retrieved = retrieve_knowledge.fn(sessions, embeddings, index, {"raw": sessions, "rules": rules}, cfg)
    assert (embeddings.kind, index.kind, retrieved.kind) == ("embeddings", "index", "retrieved")
    assert retrieve_knowledge.fn(sessions, embeddings, index, {"raw": sessions, "rules": rules}, cfg) == retrieved
    assert set(read_artifact(retrieved)["format"]) == {"raw", "rules"}

    sft = SMOKE.model_copy(update={"knowledge": ICLConfig(formats=("rules",), demonstrations=1), "quantization": "none"})
    adapter = train_adapter.fn(sessions, retrieved, None, model, sft)
    assert adapter.kind == "adapter" and (adapter.path() / "adapter_model.safetensors").exists()
    assert train_adapter.fn(sessions, retrieved, None, model, sft) == adapter  # deterministic: same content hash
    stats = read_train_stats(adapter.path())  # its training cost, kept beside it for the results row
    assert stats["train_tokens"] > 0 and stats["train_seconds"] > 0

    # SFT+ICL: trained on rules, prompted with raw examples (chosen independently)
    predictions = student_predict.fn(sessions, retrieved, adapter, model, ICLConfig(formats=("raw",), demonstrations=1))
    frame = read_artifact(predictions)
    assert predictions.kind == "predictions" and frame.columns == list(PREDICTION_COLUMNS) and frame.height == 2
    assert isinstance(SFTConfig.model_json_schema(), dict)  # a form the Prefect UI can render
