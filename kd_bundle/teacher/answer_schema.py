"""The JSON schema of AICL's bundle answer, for endpoints that decode under a schema (OpenAI, vLLM, llama.cpp).

`{"bundle1": ["product2", "product5"], "bundle2": [...]}`: keys bundle1..bundleK (bundle1 required, the others
optional, in order), each an array of at least 2 distinct product names of this session ("product1".."productN").
The intent form holds `{"products": [...], "intent": "..."}` per bundle. kd_bundle.data.parsing reads both forms.
K defaults to 5, the most bundles any session of the three AICL domains holds; bundles may share products (a
few dozen sessions have more bundles than half their products), so K is not tied to N.

`portable_format` rewrites a request's schema into the subset OpenAI's strict mode accepts (every key required,
optional ones nullable, no length or uniqueness keywords): the teacher client sends it to an endpoint that refused
the full schema, before it falls back to plain text.
"""

from __future__ import annotations

from typing import Any

MAX_BUNDLES = 5  # the most bundles of any session in electronic, food and clothing
MAX_INTENT_CHARS = 60  # "3 to 5 words"; a bound keeps a small model from writing an essay inside the string
_INTENT = {"type": "string", "minLength": 3, "maxLength": MAX_INTENT_CHARS}


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
        "properties": {"products": products, "intent": _INTENT},
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
    return {"type": "object", "properties": {key: _INTENT for key in keys}, "required": keys,
            "additionalProperties": False}


def detection_format(n_items: int, max_bundles: int = MAX_BUNDLES, intents: bool = False) -> dict[str, Any]:
    """The `response_format` of a bundle-detection request (pass it to TeacherClient.complete)."""
    return _json_schema("bundles", bundle_answer_schema(n_items, max_bundles, intents))


def intent_format(n_bundles: int) -> dict[str, Any]:
    """The `response_format` of an intent request after `n_bundles` were detected."""
    return _json_schema("intents", intent_answer_schema(n_bundles))


# JSON-schema keywords OpenAI's strict mode refuses; the decoding constraint they add is re-checked by the parser
_NOT_PORTABLE = ("uniqueItems", "minItems", "maxItems", "minLength", "maxLength")


def portable_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` in the strict-mode subset: every property required (an optional one becomes nullable, so
    `{"bundle1": [...], "bundle2": null}` is how a one-bundle answer reads), no length/uniqueness keywords."""
    out = {key: value for key, value in schema.items() if key not in _NOT_PORTABLE}
    if isinstance(out.get("items"), dict):
        out["items"] = portable_schema(out["items"])
    if isinstance(out.get("properties"), dict):
        required = set(schema.get("required", ()))
        properties = {key: portable_schema(value) for key, value in out["properties"].items()}
        out["properties"] = {key: value if key in required else {"anyOf": [value, {"type": "null"}]}
                             for key, value in properties.items()}
        out["required"] = list(properties)
        out["additionalProperties"] = False
    return out


def portable_format(response_format: dict[str, Any]) -> dict[str, Any] | None:
    """The same request in the strict-mode subset; None when it is already portable (nothing left to try)."""
    spec = response_format.get("json_schema")
    if response_format.get("type") != "json_schema" or not isinstance(spec, dict) or "schema" not in spec:
        return None
    schema = portable_schema(spec["schema"])
    return None if schema == spec["schema"] else {**response_format, "json_schema": {**spec, "schema": schema}}


def _json_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
