"""The answer schema: what a schema-honouring endpoint may write is exactly what the tolerant parser accepts."""

from __future__ import annotations

import jsonschema
import pytest

from kd_bundle.answer_schema import bundle_answer_schema, detection_format, intent_format
from kd_bundle.parsing import parse_bundles, parse_intents


def _valid(answer, schema) -> bool:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema).is_valid(answer)


def test_the_schema_admits_aicl_answers_of_this_session_only():
    schema = bundle_answer_schema(6, max_bundles=3)
    good = {"bundle1": ["product1", "product2", "product3"], "bundle2": ["product4", "product6"]}
    assert _valid(good, schema) and parse_bundles(str(good), 6).bundles == [[1, 2, 3], [4, 6]]
    assert not _valid({"bundle1": ["product1"]}, schema)  # a bundle holds 2+ products
    assert not _valid({"bundle1": ["product1", "product7"]}, schema)  # not a product of this session
    assert not _valid({"bundle1": ["product1", "product1"]}, schema)  # distinct products
    assert not _valid({}, schema) and not _valid({"bundle2": ["product1", "product2"]}, schema)  # bundle1 first
    assert not _valid({f"bundle{b}": ["product1", "product2"] for b in range(1, 5)}, schema)  # at most 3 bundles
    assert not _valid({"bundle1": ["product1", "product2"], "note": "x"}, schema)


def test_the_intent_form_parses_into_bundles_and_intents():
    schema = bundle_answer_schema(4, intents=True)
    answer = {"bundle1": {"products": ["product2", "product4"], "intent": "home office"}}
    assert _valid(answer, schema) and not _valid({"bundle1": ["product2", "product4"]}, schema)
    parsed = parse_bundles(str(answer), 4)
    assert parsed.bundles == [[2, 4]] and parsed.intents == ["home office"]


def test_response_formats_are_what_openai_vllm_and_llama_cpp_accept():
    detection = detection_format(10)
    assert detection["type"] == "json_schema" and detection["json_schema"]["strict"] is True
    assert detection["json_schema"]["name"] == "bundles" and len(detection["json_schema"]["schema"]["properties"]) == 5
    intents = intent_format(2)["json_schema"]["schema"]
    assert _valid({"bundle1": "take photos", "bundle2": "gaming setup"}, intents)
    assert not _valid({"bundle1": "take photos"}, intents)  # one intent per detected bundle
    assert parse_intents('{"bundle1": "take photos", "bundle2": "gaming setup"}') == ["take photos", "gaming setup"]
    with pytest.raises(ValueError, match="n_items=1"):
        bundle_answer_schema(1)
