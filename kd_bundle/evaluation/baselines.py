"""Non-LLM bundlers: the SIGIR'22 pattern detector, grouping by leaf category, and the positional references.

The positional references (POSITIONAL_METHODS) read no title and call no model: the first two products, the last
two, or the whole session as one bundle. A score such a rule reaches is a habit of position, not knowledge: the
grammar-held zero-shot student answers `['product1', 'product2']` in most sessions, so every table carries them.

BundleRec gives categories for bundled items only, so at test time "has a category" leaks "is in a bundle".
By default (`categories="inferred"`) every test item's category is therefore inferred from its title: the
category of the most similar training item title (TF-IDF cosine). `categories="given"` keeps the dataset's
categories where present (the leaky setting, closer to SIGIR'22, which had categories for every item).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from kd_bundle.config import BaselineConfig
from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS


def infer_categories(sessions: pl.DataFrame, reference: pl.DataFrame, keep_given: bool = False) -> pl.DataFrame:
    """`sessions` with categories inferred from the most similar titled item of `reference` (all, or missing only)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    known = (
        reference.select("titles", "categories").explode("titles", "categories").drop_nulls("categories")
        .unique("titles", keep="first", maintain_order=True)  # any-row unique made reruns disagree
        .sort("titles")  # the tie-break order below: independent of the reference's row order
    )
    if known.height == 0:
        raise ValueError("infer_categories: the reference sessions carry no known category")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    known_vectors = vectorizer.fit_transform(known["titles"].to_list())
    flat = sessions.select("session_id", "titles", "categories").explode("titles", "categories")
    if not keep_given:
        flat = flat.with_columns(pl.lit(None, dtype=pl.String).alias("categories"))
    missing = flat["categories"].is_null()
    if not missing.any():
        return sessions
    nearest = nearest_rows(vectorizer.transform(flat.filter(missing)["titles"].to_list()), known_vectors)
    guesses = iter(known["categories"].gather(nearest).to_list())
    filled = [category if category is not None else next(guesses) for category in flat["categories"].to_list()]
    lengths = sessions["item_ids"].list.len().to_list()
    return sessions.with_columns(categories=pl.Series(_regroup(filled, lengths), dtype=pl.List(pl.String)))


TIE_TOLERANCE = 1e-9  # cosine scores this close are a tie: BLAS and summation order differ in the last bits


def nearest_rows(queries: Any, candidates: Any, chunk: int = 1024) -> np.ndarray:
    """For each query row, the candidate row of highest cosine similarity (rows are L2-normalised, as TF-IDF's).

    Ties, within TIE_TOLERANCE, go to the lowest candidate row, so the answer is the same on every machine;
    a nearest-neighbour search's order among equal distances is not (issue 12: Food's category row moved
    from 103 to 102 scored sessions on another machine).
    """
    picks = []
    for start in range(0, queries.shape[0], chunk):
        scores = np.asarray((queries[start : start + chunk] @ candidates.T).todense())
        best = scores.max(axis=1, keepdims=True)
        picks.append(np.argmax(scores >= best - TIE_TOLERANCE, axis=1))  # first True: the lowest tied row
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


POSITIONAL_METHODS = ("first-two", "last-two", "whole-session")
BASELINE_METHODS = ("pattern", "category", *POSITIONAL_METHODS)  # the reference rows of every results table


def baseline_label(method: str) -> str:
    """The results table's `method` of a baseline: 'pattern-baseline', 'category-baseline', or the positional
    reference's own name ('first-two', 'last-two', 'whole-session')."""
    return method if method in POSITIONAL_METHODS else f"{method}-baseline"


def predict_baseline(sessions: pl.DataFrame, patterns: pl.DataFrame | None, cfg: BaselineConfig) -> pl.DataFrame:
    """Predicted bundles (item ids) per session; `sessions` must already have a category for every item, except for
    the positional references, which read the item order alone."""
    if cfg.method in POSITIONAL_METHODS:
        return positional_predictions(sessions, cfg.method)
    if cfg.method == "pattern":
        if patterns is None:
            raise ValueError("predict_baseline: the pattern bundler needs mined patterns")
        itemsets = [set(c) for c in patterns.filter(pl.col("kind") == "itemset")["categories"].to_list()]
        bundle_fn = lambda items, categories: _pattern_bundles(items, categories, itemsets)  # noqa: E731
    else:
        bundle_fn = _category_bundles
    rows = []
    for row in sessions.select("session_id", "item_ids", "categories").iter_rows(named=True):
        bundles, intents = bundle_fn(row["item_ids"], row["categories"])
        rows.append(dict(session_id=row["session_id"], bundles=bundles, intents=intents, raw=None))
    return pl.DataFrame(rows, schema=PREDICTION_COLUMNS)


def positional_predictions(sessions: pl.DataFrame, method: str) -> pl.DataFrame:
    """One bundle per session by position alone (POSITIONAL_METHODS); a one-item session gets none."""
    pick = {"first-two": lambda items: items[:2], "last-two": lambda items: items[-2:],
            "whole-session": lambda items: items}
    if method not in pick:
        raise ValueError(f"positional_predictions: unknown method {method!r}; expected one of {POSITIONAL_METHODS}")
    rows = []
    for sid, items in sessions.select("session_id", "item_ids").iter_rows():
        bundle = pick[method](list(items))
        rows.append(dict(session_id=sid, bundles=[bundle] if len(bundle) >= 2 else [], intents=None, raw=None))
    return pl.DataFrame(rows, schema=PREDICTION_COLUMNS)


def _pattern_bundles(items: list[str], categories: list[str | None], itemsets: list[set[str]]) -> tuple[list, list]:
    """SIGIR'22 detection: for each frequent itemset r, the session items whose category is in r, if 2 or more."""
    found: dict[tuple[str, ...], str] = {}
    for itemset in itemsets:
        members = tuple(item for item, category in zip(items, categories) if category in itemset)
        if len(members) >= 2 and members not in found:
            found[members] = " & ".join(sorted({c for c in categories if c in itemset}))
    return [list(m) for m in found], list(found.values())


def _category_bundles(items: list[str], categories: list[str | None]) -> tuple[list, list]:
    groups: dict[str, list[str]] = {}
    for item, category in zip(items, categories):
        if category:
            groups.setdefault(category, []).append(item)
    kept = {category: members for category, members in groups.items() if len(members) >= 2}
    return list(kept.values()), list(kept)


def _regroup(flat: list, lengths: list[int]) -> list[list]:
    out, start = [], 0
    for length in lengths:
        out.append(flat[start : start + length])
        start += length
    return out
