"""The JSON schema of AICL's bundle answer, for endpoints that decode under a schema (OpenAI, vLLM, llama.cpp).

`{"bundle1": ["product2", "product5"], "bundle2": [...]}`: keys bundle1..bundleK (bundle1 required, the others
optional, in order), each an array of at least 2 distinct product names of this session ("product1".."productN").
The intent form holds `{"products": [...], "intent": "..."}` per bundle. kd_bundle.parsing reads both forms.
K defaults to 5, the most bundles any session of the three AICL domains holds; bundles may share products (a
few dozen sessions have more bundles than half their products), so K is not tied to N.
"""

from __future__ import annotations

from typing import Any

MAX_BUNDLES = 5  # the most bundles of any session in electronic, food and clothing
MAX_INTENT_CHARS = 60  # "3 to 5 words"; a bound keeps a small model from writing an essay inside the string


def bundle_answer_schema(n_items: int, max_bundles: int = MAX_BUNDLES, intents: bool = False) -> dict[str, Any]:
    """The schema of one session's answer: only its `n_items` products, at most `max_bundles` bundles."""
    if n_items < 2:
        raise ValueError(f"bundle_answer_schema: a session needs 2+ products to hold a bundle, got n_items={n_items}")
    if max_bundles < 1:
        raise ValueError(f"bundle_answer_schema: max_bundles must be >= 1, got {max_bundles}")
    products = {
        "type": "array",
        "items": {"type": "string", "enum": [f"product{p}" for p in range(1, n_items + 1)]},
        "minItems": 2,
        "maxItems": n_items,
        "uniqueItems": True,
    }
    bundle = products if not intents else {
        "type": "object",
        "properties": {"products": products, "intent": {"type": "string", "minLength": 3, "maxLength": MAX_INTENT_CHARS}},
        "required": ["products", "intent"],
        "additionalProperties": False,
    }
    keys = [f"bundle{b}" for b in range(1, max_bundles + 1)]
    return {
        "type": "object",
        "properties": {key: bundle for key in keys},
        "required": keys[:1],
        "additionalProperties": False,
    }


def intent_answer_schema(n_bundles: int) -> dict[str, Any]:
    """The schema of AICL's intent turn: `{"bundle1": "intent", ...}` for each detected bundle."""
    keys = [f"bundle{b}" for b in range(1, max(1, n_bundles) + 1)]
    intent = {"type": "string", "minLength": 3, "maxLength": MAX_INTENT_CHARS}
    return {"type": "object", "properties": {key: intent for key in keys}, "required": keys,
            "additionalProperties": False}


def detection_format(n_items: int, max_bundles: int = MAX_BUNDLES, intents: bool = False) -> dict[str, Any]:
    """The `response_format` of a bundle-detection request (pass it to TeacherClient.complete)."""
    return _json_schema("bundles", bundle_answer_schema(n_items, max_bundles, intents))


def intent_format(n_bundles: int) -> dict[str, Any]:
    """The `response_format` of an intent request after `n_bundles` were detected."""
    return _json_schema("intents", intent_answer_schema(n_bundles))


def _json_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
