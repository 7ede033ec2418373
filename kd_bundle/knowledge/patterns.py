"""Knowledge format 1: frequent category patterns mined from training bundles with Apriori.

Each ground-truth bundle becomes a transaction of its items' leaf categories (notes/paper.md section 3).
Frequent itemsets of size 2..5 and the association rules between their parts are kept in one frame,
then rendered as short sentences a prompt can carry.
"""

from __future__ import annotations

import polars as pl
from efficient_apriori import apriori

from kd_bundle.config import PatternConfig

PATTERN_COLUMNS = ["kind", "categories", "antecedent", "consequent", "support", "confidence", "lift", "count"]
PATTERN_SCHEMA = {
    "kind": pl.String,  # "itemset" or "rule"
    "categories": pl.List(pl.String),  # every category of the itemset (rule: antecedent + consequent)
    "antecedent": pl.List(pl.String),
    "consequent": pl.List(pl.String),
    "support": pl.Float64,
    "confidence": pl.Float64,
    "lift": pl.Float64,
    "count": pl.Int64,
}


def bundle_transactions(sessions: pl.DataFrame) -> list[tuple[str, ...]]:
    """One transaction per ground-truth bundle: the distinct leaf categories of its items (unknown ones dropped)."""
    transactions = []
    for row in sessions.select("item_ids", "categories", "bundles").iter_rows(named=True):
        category_of = dict(zip(row["item_ids"], row["categories"]))
        for bundle in row["bundles"]:
            categories = sorted({category_of[item] for item in bundle if category_of.get(item)})
            if len(categories) >= 1:
                transactions.append(tuple(categories))
    return transactions


def mine_patterns(sessions: pl.DataFrame, cfg: PatternConfig) -> pl.DataFrame:
    """Frequent category itemsets (sizes cfg.min_size..cfg.max_size) and rules, most frequent first.

    Itemset "confidence" is the SIGIR'22 definition, count(itemset) / sum of the counts of its single
    categories; rule confidence and lift are the standard ones from efficient-apriori.
    """
    transactions = bundle_transactions(sessions)
    if not transactions:
        raise ValueError("mine_patterns: no training bundle has a known category; nothing to mine")
    itemsets, rules = apriori(
        transactions, min_support=cfg.min_support, min_confidence=cfg.min_confidence, max_length=cfg.max_size
    )
    n = len(transactions)
    singles = {items[0]: count for items, count in itemsets.get(1, {}).items()}
    rows = []
    for size, counted in itemsets.items():
        if not cfg.min_size <= size <= cfg.max_size:
            continue
        for items, count in counted.items():
            expected = n
            for item in items:
                expected *= singles[item] / n
            rows.append(
                dict(
                    kind="itemset", categories=list(items), antecedent=[], consequent=[], support=count / n,
                    confidence=count / sum(singles[item] for item in items), lift=count / expected, count=count,
                )
            )
    for rule in rules:
        size = len(rule.lhs) + len(rule.rhs)
        if cfg.min_size <= size <= cfg.max_size:
            rows.append(
                dict(
                    kind="rule", categories=sorted(rule.lhs + rule.rhs), antecedent=list(rule.lhs),
                    consequent=list(rule.rhs), support=rule.support, confidence=rule.confidence, lift=rule.lift,
                    count=rule.count_full,
                )
            )
    frame = pl.DataFrame(rows, schema=PATTERN_SCHEMA) if rows else pl.DataFrame(schema=PATTERN_SCHEMA)
    return frame.sort(["kind", "count", "confidence", "categories"], descending=[False, True, True, False])


def render_pattern_lines(patterns: pl.DataFrame, categories: list[str | None] | None = None, max_lines: int = 20) -> list[str]:
    """The most frequent itemsets as sentences; with `categories`, only those touching 2+ of them."""
    itemsets = patterns.filter(pl.col("kind") == "itemset")
    if categories is not None:
        present = sorted({c for c in categories if c})
        itemsets = itemsets.filter(pl.col("categories").list.set_intersection(present).list.len() >= 2)
    lines = []
    for row in itemsets.head(max_lines).iter_rows(named=True):
        names = ", ".join(f'"{c}"' for c in row["categories"])
        lines.append(
            f"Products from the categories {names} are often bundled together "
            f"({row['count']} training bundles, support {row['support']:.3f})."
        )
    return lines
