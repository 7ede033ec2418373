"""The teacher baseline: predictions for test sessions, with and without retrieved knowledge, scored like any method."""

from __future__ import annotations

import polars as pl

from kd_bundle.evaluation.metrics import score_predictions
from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS
from kd_bundle.evaluation.teacher_baseline import (
    KNOWLEDGE_HEADER,
    TRUNCATED_MARK,
    TeacherPredictConfig,
    detect_prompt,
    predict_bundles,
)
from kd_bundle.teacher import RequestCache, TeacherClient, TeacherConfig, request_cache_path
from tests.kd_bundle.openai_stub import (  # noqa: F401
    HONOUR,
    REJECT,
    TRUNCATED,
    StubOpenAI,
    bundle_teacher,
    electronic_sessions,
    stub,
    teacher_env,
)

CFG = TeacherConfig(model="stub-teacher", max_tokens=64)


def test_teacher_predicts_item_bundles_and_intents_for_test_sessions(stub, electronic_sessions):
    test = electronic_sessions.filter(pl.col("split") == "test")
    with TeacherClient(CFG) as client:
        predictions = predict_bundles(test, TeacherPredictConfig(), client)
    assert predictions.schema == pl.Schema(PREDICTION_COLUMNS)
    assert predictions["session_id"].to_list() == test["session_id"].to_list()
    for row, session in zip(predictions.iter_rows(named=True), test.iter_rows(named=True)):
        assert row["bundles"] == [session["item_ids"][:2]]  # the stub answers product1 + product2
        assert row["intents"] == ["device with accessories"]
        assert "bundle1" in row["raw"] and "device with accessories" in row["raw"]
    assert len(stub.answered) == 2 * test.height  # bundles turn + intents turn
    scores = score_predictions(predictions, test)
    assert scores["n_sessions"] == test.height and scores["n_failed"] == 0


def test_retrieved_knowledge_goes_in_front_of_the_prompt(stub, electronic_sessions):
    test = electronic_sessions.filter(pl.col("split") == "test")
    first = test["session_id"][0]
    knowledge = pl.DataFrame(
        {"session_id": [first, first], "format": ["rules", "thoughts"],
         "knowledge": [["- Group a device with its accessories."], ["Products: {...}\nBundles: {...}"]]}
    )
    with TeacherClient(CFG) as client:
        predict_bundles(test, TeacherPredictConfig(intents=False), client, knowledge=knowledge)
    prompts = [body["messages"][0]["content"] for body in stub.answered]  # threads: any order
    with_knowledge = [p for p in prompts if p.startswith(KNOWLEDGE_HEADER.split("{")[0])]
    assert len(with_knowledge) == 1 and len(prompts) == test.height
    assert "- Group a device with its accessories.\n\nProducts: {...}" in with_knowledge[0]
    assert "Based on the knowledge above, detect bundles" in with_knowledge[0]
    assert sum(p.startswith("A bundle can be") for p in prompts) == test.height - 1  # no knowledge: AICL's prompt
    assert detect_prompt(["a", "b"], []).startswith("A bundle can be")


def test_unparsable_answers_keep_their_raw_text_and_count_as_failed(teacher_env, electronic_sessions, monkeypatch):
    test = electronic_sessions.filter(pl.col("split") == "test")
    with StubOpenAI(lambda messages: "I cannot see any bundle here, sorry") as server:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            predictions = predict_bundles(test, TeacherPredictConfig(), client)
            assert client.progress().failures == test.height
        assert len(server.answered) == test.height  # no intent turn after a failed bundle turn
    assert predictions["bundles"].null_count() == test.height
    assert predictions["raw"].to_list() == ["I cannot see any bundle here, sorry"] * test.height
    assert score_predictions(predictions, test)["n_failed"] == test.height


def test_every_detection_asks_for_its_sessions_schema_and_the_schema_answers_are_scored(stub, electronic_sessions):
    stub.schemas = HONOUR
    test = electronic_sessions.filter(pl.col("split") == "test")
    with TeacherClient(CFG) as client:
        predictions = predict_bundles(test, TeacherPredictConfig(), client)
    detections = [b for b in stub.answered if b.get("response_format", {}).get("json_schema", {}).get("name") == "bundles"]
    assert len(detections) == test.height == len(stub.answered) // 2  # + one intents turn each, also structured
    sizes = {len(b["response_format"]["json_schema"]["schema"]["properties"]["bundle1"]["items"]["enum"])
             for b in detections}
    assert sizes == set(test["item_ids"].list.len().to_list())  # each session's own product names
    assert all(b["response_format"]["json_schema"]["name"] == "intents" for b in stub.answered if b not in detections)
    assert predictions["bundles"].to_list() == [[ids[:2]] for ids in test["item_ids"].to_list()]
    assert score_predictions(predictions, test)["n_failed"] == 0


def test_an_endpoint_that_rejects_schemas_still_yields_parsed_predictions(teacher_env, electronic_sessions, monkeypatch,
                                                                          caplog):
    test = electronic_sessions.filter(pl.col("split") == "test")
    with StubOpenAI(bundle_teacher) as server:
        server.schemas = REJECT
        monkeypatch.setenv("KD_TEACHER_BASE_URL", server.base_url)
        with TeacherClient(CFG) as client:
            predictions = predict_bundles(test, TeacherPredictConfig(), client)
    assert score_predictions(predictions, test)["n_failed"] == 0
    assert predictions["intents"].to_list() == [["device with accessories"]] * test.height
    # found out once: the full schema, then its strict-mode subset (2 threads may both ask each)
    assert sum(f is not None for f in server.response_formats) <= 4
    assert caplog.text.count("does not accept response_format") == 1


def test_a_detection_cut_at_max_tokens_is_a_failed_session_never_cached(stub, electronic_sessions):
    stub.always_fail = TRUNCATED
    test = electronic_sessions.filter(pl.col("split") == "test")
    with TeacherClient(CFG) as client:
        predictions = predict_bundles(test, TeacherPredictConfig(), client)
        assert client.progress().truncated == test.height and client.progress().failures == test.height
    assert predictions["bundles"].null_count() == test.height
    assert all(raw.endswith(TRUNCATED_MARK) for raw in predictions["raw"])
    assert len(RequestCache(request_cache_path())) == 0
