"""The answer schema: what a schema-honouring endpoint may write is exactly what the tolerant parser accepts."""

from __future__ import annotations

import json

import jsonschema
import pytest

from kd_bundle.data.parsing import parse_bundles, parse_intents
from kd_bundle.teacher.answer_schema import bundle_answer_schema, detection_format, intent_format, portable_format
from tests.kd_bundle.openai_stub import strict_mode_problem


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


def test_response_formats_are_json_schema_requests_with_a_name_and_the_strict_flag():
    detection = detection_format(10)
    assert detection["type"] == "json_schema" and detection["json_schema"]["strict"] is True
    assert detection["json_schema"]["name"] == "bundles" and len(detection["json_schema"]["schema"]["properties"]) == 5
    intents = intent_format(2)["json_schema"]["schema"]
    assert _valid({"bundle1": "take photos", "bundle2": "gaming setup"}, intents)
    assert not _valid({"bundle1": "take photos"}, intents)  # one intent per detected bundle
    assert parse_intents('{"bundle1": "take photos", "bundle2": "gaming setup"}') == ["take photos", "gaming setup"]
    with pytest.raises(ValueError, match="n_items=1"):
        bundle_answer_schema(1)


@pytest.mark.parametrize("intents", [False, True])
def test_the_portable_form_is_in_openais_strict_subset_and_parses_the_same(intents):
    full = detection_format(4, max_bundles=3, intents=intents)
    assert strict_mode_problem(full["json_schema"]["schema"]) is not None  # OpenAI's strict mode refuses it
    portable = portable_format(full)
    schema = portable["json_schema"]["schema"]
    assert strict_mode_problem(schema) is None and portable["json_schema"]["name"] == "bundles"
    bundle = ["product2", "product4"]
    first = {"products": bundle, "intent": "home office"} if intents else bundle
    answer = {"bundle1": first, "bundle2": None, "bundle3": None}
    assert _valid(answer, schema) and not _valid({"bundle1": first}, schema)  # unused bundles are written null
    parsed = parse_bundles(json.dumps(answer), 4)
    assert parsed.bundles == [[2, 4]] and parsed.intents == (["home office"] if intents else None)
    assert portable_format(portable) is None  # already portable: nothing further to try
    assert strict_mode_problem(portable_format(intent_format(2))["json_schema"]["schema"]) is None
