"""Category transactions, Apriori itemsets and rules (counts and measures computed by hand), and their rendering."""

from __future__ import annotations

from itertools import combinations

import polars as pl
import pydantic
import pytest

from kd_bundle.config import DataConfig, PatternConfig, settings
from kd_bundle.data.sessions import load_sessions, split_of
from kd_bundle.knowledge.patterns import PATTERN_COLUMNS, bundle_transactions, mine_patterns, render_pattern_lines

SESSION_SCHEMA = {
    "session_id": pl.Int64,
    "item_ids": pl.List(pl.String),
    "categories": pl.List(pl.String),
    "bundles": pl.List(pl.List(pl.String)),
}


def _sessions() -> pl.DataFrame:
    # Categories A..D; None = unknown category.
    return pl.DataFrame(
        [
            # s1: a(A) b(B) c(C) d(?) -> transactions (A,B) and (A,B,C)
            dict(session_id=1, item_ids=["a", "b", "c", "d"], categories=["A", "B", "C", None],
                 bundles=[["a", "b"], ["b", "a", "c"]]),
            # s2: e(A) f(B) g(D) -> (A,B,D)
            dict(session_id=2, item_ids=["e", "f", "g"], categories=["A", "B", "D"], bundles=[["e", "f", "g"]]),
            # s3: h(C) i(D) j(?) -> (C,D); {i, j} -> (D,) since j's category is unknown
            dict(session_id=3, item_ids=["h", "i", "j"], categories=["C", "D", None], bundles=[["h", "i"], ["i", "j"]]),
            # s4: k(A) l(A) -> (A,): a transaction holds distinct categories
            dict(session_id=4, item_ids=["k", "l"], categories=["A", "A"], bundles=[["k", "l"]]),
            # s5: only unknown categories -> no transaction; s6: no bundle at all
            dict(session_id=5, item_ids=["m", "n"], categories=[None, None], bundles=[["m", "n"]]),
            dict(session_id=6, item_ids=["o", "p"], categories=["A", "B"], bundles=[]),
        ],
        schema=SESSION_SCHEMA,
    )  # fmt: skip


# n = 6 transactions. Single counts: A 4, B 3, C 2, D 3.
# Itemset (count): confidence = count / sum of single counts; lift = count / (n * prod(single / n)).
#   AB  (3): 3/(4+3) = 3/7;  expected 6 * 4/6 * 3/6 = 2        -> lift 1.5
#   BC  (1): 1/(3+2) = 1/5;  expected 6 * 3/6 * 2/6 = 1        -> lift 1
#   CD  (1): 1/(2+3) = 1/5;  expected 6 * 2/6 * 3/6 = 1        -> lift 1
#   AC  (1): 1/(4+2) = 1/6;  expected 6 * 4/6 * 2/6 = 4/3      -> lift 3/4
#   BD  (1): 1/(3+3) = 1/6;  expected 6 * 3/6 * 3/6 = 3/2      -> lift 2/3
#   AD  (1): 1/(4+3) = 1/7;  expected 6 * 4/6 * 3/6 = 2        -> lift 1/2
#   ABC (1): 1/(4+3+2) = 1/9;  expected 6 * 4/6 * 3/6 * 2/6 = 2/3 -> lift 3/2
#   ABD (1): 1/(4+3+3) = 1/10; expected 6 * 4/6 * 3/6 * 3/6 = 1   -> lift 1
# Order: count desc, then confidence desc, then categories.
EXPECTED_ITEMSETS = [
    (["A", "B"], 3, 3 / 7, 1.5),
    (["B", "C"], 1, 1 / 5, 1.0),
    (["C", "D"], 1, 1 / 5, 1.0),
    (["A", "C"], 1, 1 / 6, 0.75),
    (["B", "D"], 1, 1 / 6, 2 / 3),
    (["A", "D"], 1, 1 / 7, 0.5),
    (["A", "B", "C"], 1, 1 / 9, 1.5),
    (["A", "B", "D"], 1, 1 / 10, 1.0),
]


def _itemsets(patterns: pl.DataFrame) -> pl.DataFrame:
    return patterns.filter(pl.col("kind") == "itemset")


def test_bundle_transactions() -> None:
    assert bundle_transactions(_sessions()) == [("A", "B"), ("A", "B", "C"), ("A", "B", "D"), ("C", "D"), ("D",), ("A",)]


def test_mine_patterns_itemsets_by_hand() -> None:
    patterns = mine_patterns(_sessions(), PatternConfig())
    assert patterns.columns == PATTERN_COLUMNS
    itemsets = _itemsets(patterns)
    assert itemsets["categories"].to_list() == [c for c, *_ in EXPECTED_ITEMSETS]
    assert itemsets["count"].to_list() == [count for _, count, *_ in EXPECTED_ITEMSETS]
    assert itemsets["support"].to_list() == pytest.approx([count / 6 for _, count, *_ in EXPECTED_ITEMSETS])
    assert itemsets["confidence"].to_list() == pytest.approx([conf for *_, conf, _ in EXPECTED_ITEMSETS])
    assert itemsets["lift"].to_list() == pytest.approx([lift for *_, lift in EXPECTED_ITEMSETS])
    assert itemsets["antecedent"].list.len().sum() == 0 and itemsets["consequent"].list.len().sum() == 0
    # Itemsets come before rules.
    assert patterns["kind"].to_list() == ["itemset"] * 8 + ["rule"] * (patterns.height - 8)


def test_mine_patterns_rules_use_standard_confidence_and_lift() -> None:
    rules = mine_patterns(_sessions(), PatternConfig()).filter(pl.col("kind") == "rule")
    # Every way to split each of the 8 itemsets: 6 pairs x 2 + 2 triples x 6 = 24 rules (min_confidence 0.001).
    assert rules.height == 24
    a_to_b = rules.filter((pl.col("antecedent") == ["A"]) & (pl.col("consequent") == ["B"])).row(0, named=True)
    # A -> B: count(AB)/count(A) = 3/4; lift = conf / support(B) = (3/4) / (3/6) = 1.5; support 3/6.
    assert a_to_b["confidence"] == pytest.approx(3 / 4)
    assert a_to_b["lift"] == pytest.approx(1.5)
    assert a_to_b["support"] == pytest.approx(0.5)
    assert (a_to_b["count"], a_to_b["categories"]) == (3, ["A", "B"])
    # C,B -> A (categories sorted): count(ABC)/count(BC) = 1/1; lift = 1 / support(A) = 6/4.
    bc_to_a = rules.filter((pl.col("antecedent") == ["B", "C"]) & (pl.col("consequent") == ["A"])).row(0, named=True)
    assert bc_to_a["confidence"] == pytest.approx(1.0)
    assert bc_to_a["lift"] == pytest.approx(1.5)
    assert bc_to_a["categories"] == ["A", "B", "C"]


def test_min_support_and_confidence_filter() -> None:
    # min_support 0.3 needs count >= 1.8 of 6: only AB (3) among itemsets of size >= 2.
    patterns = mine_patterns(_sessions(), PatternConfig(min_support=0.3))
    assert _itemsets(patterns)["categories"].to_list() == [["A", "B"]]
    # Rules A->B (3/4) and B->A (3/3); min_confidence 0.8 keeps only B -> A.
    rules = mine_patterns(_sessions(), PatternConfig(min_support=0.3, min_confidence=0.8)).filter(pl.col("kind") == "rule")
    assert rules.select("antecedent", "consequent").rows() == [(["B"], ["A"])]


@pytest.mark.parametrize(("min_size", "max_size"), [(2, 2), (3, 3), (3, 5), (2, 5)])
def test_min_and_max_size_respected(min_size: int, max_size: int) -> None:
    patterns = mine_patterns(_sessions(), PatternConfig(min_size=min_size, max_size=max_size))
    expected = [c for c, *_ in EXPECTED_ITEMSETS if min_size <= len(c) <= max_size]
    assert _itemsets(patterns)["categories"].to_list() == expected
    sizes = patterns["categories"].list.len()
    assert sizes.min() >= min_size and sizes.max() <= max_size


def test_pattern_config_rejects_min_size_above_max_size() -> None:
    with pytest.raises(pydantic.ValidationError, match="min_size 4 > max_size 3"):
        PatternConfig(min_size=4, max_size=3)
    with pytest.raises(pydantic.ValidationError):
        PatternConfig(min_size=1)  # a bundle has at least 2 items


def test_no_known_category_raises() -> None:
    sessions = _sessions().with_columns(
        pl.Series("categories", [[None] * len(items) for items in _sessions()["item_ids"]], dtype=pl.List(pl.String))
    )
    with pytest.raises(ValueError, match="no training bundle has a known category"):
        mine_patterns(sessions, PatternConfig())
    with pytest.raises(ValueError, match="no training bundle"):
        mine_patterns(_sessions().filter(pl.col("session_id") == 6), PatternConfig())  # no bundles


def test_render_pattern_lines_all_and_max_lines() -> None:
    patterns = mine_patterns(_sessions(), PatternConfig())
    lines = render_pattern_lines(patterns)
    assert len(lines) == 8  # itemsets only, never rules
    assert lines[0] == 'Products from the categories "A", "B" are often bundled together (3 training bundles, support 0.500).'
    assert lines[6] == (
        'Products from the categories "A", "B", "C" are often bundled together (1 training bundles, support 0.167).'
    )
    assert render_pattern_lines(patterns, max_lines=3) == lines[:3]


def test_render_pattern_lines_filtered_by_session_categories() -> None:
    patterns = mine_patterns(_sessions(), PatternConfig())
    # A session with categories {A, C} (plus an unknown one): itemsets touching >= 2 of them are AC and ABC.
    lines = render_pattern_lines(patterns, categories=["A", None, "C", "A"])
    assert [line.split(" are ")[0] for line in lines] == [
        'Products from the categories "A", "C"',
        'Products from the categories "A", "B", "C"',
    ]
    assert len(render_pattern_lines(patterns, categories=["A", "C"], max_lines=1)) == 1
    # Only one known category: nothing touches two.
    assert render_pattern_lines(patterns, categories=["A", "A", None]) == []
    # {A, B, D}: AB, BD, AD, ABC (touches A,B), ABD.
    lines = render_pattern_lines(patterns, categories=["D", "B", "A"])
    assert len(lines) == 5 and all('"C", "D"' not in line for line in lines)


@pytest.fixture(scope="module")
def clothing_train() -> pl.DataFrame:
    return split_of(load_sessions(DataConfig(domain="clothing"), settings().data_root), "train")


def test_real_clothing_train_split(clothing_train: pl.DataFrame) -> None:
    cfg = PatternConfig()
    transactions = bundle_transactions(clothing_train)
    n = len(transactions)
    # One transaction per bundle that has a known category: at most the 698 train sessions' bundles.
    assert 0 < n <= clothing_train["bundles"].list.len().sum()
    patterns = mine_patterns(clothing_train, cfg)
    itemsets = _itemsets(patterns)
    assert itemsets.height > 0
    sets = [set(t) for t in transactions]
    for row in itemsets.iter_rows(named=True):
        assert cfg.min_size <= len(row["categories"]) <= cfg.max_size
        assert row["count"] >= cfg.min_support * n
        assert row["count"] == pytest.approx(row["support"] * n)
        # The count is the number of transactions holding every category of the itemset.
        assert row["count"] == sum(set(row["categories"]) <= t for t in sets)
    counts = itemsets["count"].to_list()
    assert counts == sorted(counts, reverse=True)
    # Every frequent pair was found: recount all pairs directly.
    pair_counts: dict[tuple[str, str], int] = {}
    for t in transactions:
        for pair in combinations(t, 2):
            pair_counts[pair] = pair_counts.get(pair, 0) + 1
    frequent = {pair for pair, count in pair_counts.items() if count >= cfg.min_support * n}
    mined = {tuple(c) for c in itemsets["categories"].to_list() if len(c) == 2}
    assert mined == frequent
