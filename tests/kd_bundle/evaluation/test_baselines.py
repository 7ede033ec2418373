"""Non-LLM bundlers (group by category; SIGIR'22 pattern detection) and title-based category inference."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kd_bundle.config import BaselineConfig, DataConfig, PatternConfig, settings
from kd_bundle.data.sessions import load_sessions, split_of
from kd_bundle.evaluation.baselines import infer_categories, nearest_rows, predict_baseline
from kd_bundle.evaluation.predictions import PREDICTION_COLUMNS
from kd_bundle.knowledge.patterns import PATTERN_SCHEMA, mine_patterns

SCHEMA = {
    "session_id": pl.Int64,
    "item_ids": pl.List(pl.String),
    "titles": pl.List(pl.String),
    "categories": pl.List(pl.String),
    "bundles": pl.List(pl.List(pl.String)),
}


def _sessions(rows: list[tuple[int, list[str], list[str | None]]]) -> pl.DataFrame:
    return pl.DataFrame(
        [dict(session_id=sid, item_ids=items, titles=[f"title {i}" for i in items], categories=cats, bundles=[])
         for sid, items, cats in rows],
        schema=SCHEMA,
    )  # fmt: skip


def _patterns(itemsets: list[list[str]], rules: list[list[str]] = ()) -> pl.DataFrame:
    rows = [dict(kind="itemset", categories=c, antecedent=[], consequent=[], support=0.1, confidence=0.1, lift=1.0,
                 count=1) for c in itemsets]
    rows += [dict(kind="rule", categories=c, antecedent=c[:1], consequent=c[1:], support=0.1, confidence=0.5,
                  lift=1.0, count=1) for c in rules]
    return pl.DataFrame(rows, schema=PATTERN_SCHEMA)  # fmt: skip


def _bundles(predictions: pl.DataFrame) -> dict[int, list[list[str]]]:
    return dict(zip(predictions["session_id"].to_list(), predictions["bundles"].to_list()))


def test_category_baseline_groups_same_category_items() -> None:
    sessions = _sessions(
        [
            (1, ["a", "b", "c", "d", "e", "f"], ["Shoes", "Hats", "Shoes", None, "Hats", "Bags"]),
            (2, ["g", "h"], ["Shoes", "Bags"]),  # no category twice -> no bundle
            (3, ["i", "j", "k"], [None, None, "Bags"]),  # unknown categories never group
            (4, ["l", "m", "n"], ["Bags", "Bags", "Bags"]),
        ]
    )
    predictions = predict_baseline(sessions, None, BaselineConfig(method="category"))
    assert predictions.schema == pl.Schema(PREDICTION_COLUMNS)
    assert _bundles(predictions) == {1: [["a", "c"], ["b", "e"]], 2: [], 3: [], 4: [["l", "m", "n"]]}
    assert predictions["intents"].to_list() == [["Shoes", "Hats"], [], [], ["Bags"]]
    assert predictions["raw"].null_count() == 4


def test_pattern_baseline_sigir22_detection() -> None:
    sessions = _sessions(
        [
            (1, ["a", "b", "c", "d"], ["A", "B", "C", "D"]),
            (2, ["e", "f", "g"], ["A", "A", "E"]),  # two A items: {A,B} still selects both (category in itemset)
            (3, ["h", "i"], ["E", None]),
        ]
    )
    # Itemsets in frequency order; the rule over {A, D} must be ignored (itemsets only).
    patterns = _patterns([["A", "B"], ["C", "D"], ["A", "B", "C"], ["A", "E"], ["B", "E"], ["A", "B", "E"]], [["A", "D"]])
    predictions = predict_baseline(sessions, patterns, BaselineConfig(method="pattern"))
    # s1: AB -> [a,b]; CD -> [c,d]; ABC -> [a,b,c]; AE -> [a] only (skipped); BE -> [b] (skipped);
    #     ABE -> [a,b] again (de-duplicated). No [a,d] from the rule.
    # s2: AB -> [e,f]; CD -> nothing; ABC -> [e,f] again; AE -> [e,f,g]; BE -> [g] (skipped); ABE -> [e,f,g] again.
    # s3: only h has a known category -> nothing.
    assert _bundles(predictions) == {1: [["a", "b"], ["c", "d"], ["a", "b", "c"]], 2: [["e", "f"], ["e", "f", "g"]], 3: []}
    # Intent = the session's categories inside the itemset that produced the bundle first.
    assert predictions["intents"].to_list() == [["A & B", "C & D", "A & B & C"], ["A", "A & E"], []]


def test_pattern_baseline_on_mined_patterns() -> None:
    train = pl.DataFrame(
        [dict(session_id=1, item_ids=["a", "b", "c"], titles=["", "", ""], categories=["A", "B", "C"],
              bundles=[["a", "b"]]),
         dict(session_id=2, item_ids=["d", "e"], titles=["", ""], categories=["A", "B"], bundles=[["d", "e"]])],
        schema=SCHEMA,
    )  # fmt: skip
    patterns = mine_patterns(train, PatternConfig())  # one itemset {A, B} (+ rules A->B, B->A)
    test = _sessions([(7, ["x", "y", "z", "w"], ["B", "C", "A", "B"])])
    predictions = predict_baseline(test, patterns, BaselineConfig(method="pattern"))
    assert _bundles(predictions) == {7: [["x", "z", "w"]]}  # session order kept


def test_pattern_baseline_needs_patterns() -> None:
    with pytest.raises(ValueError, match="needs mined patterns"):
        predict_baseline(_sessions([(1, ["a", "b"], ["A", "A"])]), None, BaselineConfig(method="pattern"))


REFERENCE = pl.DataFrame(
    [dict(session_id=1, item_ids=["r1", "r2"], titles=["red cotton t-shirt", "leather running shoes"],
          categories=["Shirts", "Shoes"], bundles=[]),
     dict(session_id=2, item_ids=["r3", "r4"], titles=["stainless steel wrist watch", "mystery gift box"],
          categories=["Watches", None], bundles=[])],
    schema=SCHEMA,
)  # fmt: skip


def _targets() -> pl.DataFrame:
    return pl.DataFrame(
        [dict(session_id=5, item_ids=["a", "b"], titles=["blue cotton t-shirt", "trail running shoes"],
              categories=["Given", None], bundles=[["a", "b"]]),
         dict(session_id=6, item_ids=["c", "d", "e"], titles=["steel watch", "kids cotton t-shirt", "running shoes"],
              categories=[None, None, "Kept"], bundles=[])],
        schema=SCHEMA,
    )  # fmt: skip


def test_infer_categories_overrides_given_by_default() -> None:
    inferred = infer_categories(_targets(), REFERENCE)
    assert inferred["categories"].to_list() == [["Shirts", "Shoes"], ["Watches", "Shirts", "Shoes"]]
    # Everything else is untouched.
    assert inferred.drop("categories").equals(_targets().drop("categories"))
    assert inferred.schema == _targets().schema


def test_infer_categories_keep_given_fills_missing_only() -> None:
    inferred = infer_categories(_targets(), REFERENCE, keep_given=True)
    assert inferred["categories"].to_list() == [["Given", "Shoes"], ["Watches", "Shirts", "Kept"]]
    # Nothing missing: the sessions come back as they are.
    complete = _targets().with_columns(pl.Series("categories", [["X", "Y"], ["Z", "X", "Y"]]))
    assert infer_categories(complete, REFERENCE, keep_given=True).equals(complete)


def test_infer_categories_never_uses_reference_items_without_category() -> None:
    # "mystery gift box" is in the reference with no category: the exact title still gets a known category.
    target = _sessions([(9, ["q"], [None])]).with_columns(pl.Series("titles", [["mystery gift box"]]))
    (categories,) = infer_categories(target, REFERENCE)["categories"].to_list()
    assert categories[0] in {"Shirts", "Shoes", "Watches"}


def test_infer_categories_without_reference_category_raises() -> None:
    reference = REFERENCE.with_columns(pl.Series("categories", [[None, None], [None, None]], dtype=pl.List(pl.String)))
    with pytest.raises(ValueError, match="reference sessions carry no known category"):
        infer_categories(_targets(), reference)


def test_infer_categories_takes_the_first_category_of_a_repeated_title() -> None:
    # The same title under two categories (BundleRec has such items): the earlier session's wins, on every run.
    reference = pl.concat([REFERENCE, REFERENCE.with_columns(
        session_id=pl.Series([3, 4]), categories=pl.Series([["Tops", "Sneakers"], ["Clocks", None]]))])
    for _ in range(20):
        assert infer_categories(_targets(), reference)["categories"].to_list() == \
            [["Shirts", "Shoes"], ["Watches", "Shirts", "Shoes"]]


def test_inferred_categories_are_the_same_on_every_run_of_real_data() -> None:
    # Training titles repeat; an any-row `unique` kept a different one on each run, and the scores moved with it.
    frame = load_sessions(DataConfig(domain="food"), settings().data_root)
    train, test = split_of(frame, "train"), split_of(frame, "test")
    first = infer_categories(test, train)
    for _ in range(4):
        assert infer_categories(test, train).equals(first)


def test_tied_title_neighbours_resolve_the_same_whatever_the_reference_order() -> None:
    # "red apple" and "apple red" are equally close to "apple" (same words, mirrored bigrams). A nearest-neighbour
    # search returns either, by row order or float noise; the tie now goes to the lower title, in any order.
    reference = _sessions([(1, ["x1", "x2"], ["Fruit", "Tools"]), (2, ["y1", "y2"], ["Produce", "Toys"])]).with_columns(
        pl.Series("titles", [["red apple", "hammer"], ["apple red", "yoyo"]]))
    target = _sessions([(9, ["q1", "q2"], [None, None])]).with_columns(pl.Series("titles", [["apple", "hammer"]]))
    forward = infer_categories(target, reference)["categories"].to_list()
    backward = infer_categories(target, reference.reverse())["categories"].to_list()
    assert forward == backward == [["Produce", "Tools"]]


def test_nearest_rows_breaks_ties_by_lowest_row_within_tolerance() -> None:
    from scipy.sparse import csr_matrix

    candidates = csr_matrix(np.array([[0.6, 0.8], [1.0, 0.0], [1.0, 1e-12], [0.0, 1.0]]))
    queries = csr_matrix(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    # row 2 is a hair "closer" to [1, 0] than row 1 in exact arithmetic; within tolerance the lower row wins.
    assert nearest_rows(queries, candidates).tolist() == [1, 3, 0]


def test_positional_references_read_the_order_alone() -> None:
    sessions = _sessions([(1, ["a", "b", "c", "d"], [None] * 4), (2, ["x", "y"], [None, None]), (3, ["z"], [None])])
    first, last, whole = (_bundles(predict_baseline(sessions, None, BaselineConfig(method=m)))
                          for m in ("first-two", "last-two", "whole-session"))
    assert first == {1: [["a", "b"]], 2: [["x", "y"]], 3: []}
    assert last == {1: [["c", "d"]], 2: [["x", "y"]], 3: []}
    assert whole == {1: [["a", "b", "c", "d"]], 2: [["x", "y"]], 3: []}
    shuffled = sessions.with_columns(pl.col("titles").list.reverse())
    assert _bundles(predict_baseline(shuffled, None, BaselineConfig(method="first-two"))) == first  # titles unread


def test_first_two_products_beat_the_category_baseline_on_electronic() -> None:
    """Why every table carries the positional references: a rule that reads no title beats one that does."""
    from kd_bundle.evaluation.metrics import score_predictions

    frame = load_sessions(DataConfig(domain="electronic"), settings().data_root)
    train, test = split_of(frame, "train"), split_of(frame, "test")
    first = score_predictions(predict_baseline(test, None, BaselineConfig(method="first-two")), test)
    category = score_predictions(predict_baseline(infer_categories(test, train), None,
                                                  BaselineConfig(method="category")), test)
    assert first["n_scored"] == test.height
    assert first["strict_precision"] > category["strict_precision"]
