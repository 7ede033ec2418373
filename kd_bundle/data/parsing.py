"""One tolerant parser for every LLM answer that names bundles (teacher and student alike).

Accepted: AICL's `{'bundle1': ['product2', 'product5'], ...}` (Python literal or JSON), values as lists or
comma strings, bare numbers, code fences, stray text around the dict, and `bundle`/`intent` keys in a JSON list.
What cannot be read becomes a failure with a reason; the caller keeps the raw text, and the metrics count the
session as failed. Nothing here raises on model output.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```(?:json|python)?\s*(.*?)```", re.DOTALL)
_PRODUCT = re.compile(r"(?:product|item|p)?\s*#?\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedBundles:
    """`bundles` holds 1-based product numbers; None with an `error` when nothing usable was found."""

    bundles: list[list[int]] | None
    intents: list[str] | None = None
    error: str | None = None


def parse_bundles(text: str, n_items: int) -> ParsedBundles:
    """Bundles (lists of product numbers in 1..n_items, de-duplicated, order kept) from a model answer."""
    value = _first_literal(text or "")
    if value is None:
        return ParsedBundles(None, error="no dict or list literal found")
    groups, intents = _bundle_groups(value)
    if groups is None:
        return ParsedBundles(None, error=f"unexpected structure {type(value).__name__}")
    bundles, out_of_range = [], []
    for group in groups:
        numbers = _product_numbers(group)
        out_of_range += [n for n in numbers if not 1 <= n <= n_items]
        kept = list(dict.fromkeys(n for n in numbers if 1 <= n <= n_items))
        if kept:
            bundles.append(kept)
    if out_of_range:
        # A hallucinated product is AICL's error code 5: the answer is not trusted at all.
        return ParsedBundles(None, error=f"product number(s) {sorted(set(out_of_range))} outside 1..{n_items}")
    return ParsedBundles(bundles, intents=intents)


def parse_intents(text: str) -> list[str] | None:
    """Intents in bundle order from `{'bundle1': 'intent', ...}` (or a JSON list of strings)."""
    value = _first_literal(text or "")
    if isinstance(value, dict):
        return [str(v).strip() for v in value.values()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


def _first_literal(text: str) -> Any:
    """The first balanced {...} or [...] that JSON or Python literal syntax accepts."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        for start, char in enumerate(chunk):
            if char not in "{[":
                continue
            end = _balanced_end(chunk, start)
            if end is None:
                continue
            value = _load(chunk[start : end + 1])
            if value is not None:
                return value
    return None


def _balanced_end(text: str, start: int) -> int | None:
    pairs, depth, quote = {"{": "}", "[": "]"}, [], None
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            if char == quote and text[index - 1] != "\\":
                quote = None
        elif char in "'\"":
            quote = char
        elif char in pairs:
            depth.append(pairs[char])
        elif depth and char == depth[-1]:
            depth.pop()
            if not depth:
                return index
    return None


def _load(chunk: str) -> Any:
    for loader in (json.loads, ast.literal_eval):
        try:
            value = loader(chunk)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (dict, list)) and value:
            return value
    return None


def _bundle_groups(value: Any) -> tuple[list[Any] | None, list[str] | None]:
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}  # strict-mode schemas answer unused bundles null
        if all(isinstance(v, dict) for v in value.values()):  # {"bundle1": {"products": [...], "intent": "..."}}
            records = list(value.values())
        else:
            return list(value.values()), None
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        records = value
    elif isinstance(value, list):
        return value, None
    else:
        return None, None
    groups, intents = [], []
    for record in records:
        products = next((record[k] for k in record if re.search("product|item|bundle", str(k), re.I)), None)
        groups.append(products if products is not None else [])
        intents.append(str(next((record[k] for k in record if "intent" in str(k).lower()), "")).strip())
    return groups, intents


def _product_numbers(group: Any) -> list[int]:
    if isinstance(group, (list, tuple, set)):
        return [n for element in group for n in _product_numbers(element)]
    if isinstance(group, bool):
        return []
    if isinstance(group, int):
        return [group]
    return [int(m) for m in _PRODUCT.findall(str(group))]
