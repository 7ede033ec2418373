"""What the loader refuses, with the file (or source), session and row of the first offence.

Keys a later stage trusts without looking again: one item per (session, position) and no null position (else a
title is swapped or items reordered), one bundle per (session, bundle_index) (else a bundle is added), and one
split per session (else the first listing silently wins). Rows are 0-based data rows of the file, as in the
type errors of kd_bundle.data.sessions.
"""

from __future__ import annotations

import polars as pl

ITEM_COLUMNS = {
    "session_id": pl.Int64,
    "split": pl.String,
    "position": pl.Int64,
    "item_id": pl.String,
    "title": pl.String,
    "category": pl.String,
}
BUNDLE_COLUMNS = {"session_id": pl.Int64, "bundle_index": pl.Int64, "intent": pl.String, "item_ids": pl.List(pl.String)}
SPLITS = ("train", "test", "valid")


class DataError(ValueError):
    """Input data that does not fit the schema; the message names the file, row or column, and what was expected."""


def check_item_keys(items: pl.DataFrame, where: str) -> None:
    """Every item has a position, unique within its session; every session has one split."""
    _no_null(items, "position", where)
    _unique(items, ("session_id", "position"), where, "position")
    if "split" in items.columns:
        _one_split(items.select("session_id", "split"), where)


def check_bundle_keys(bundles: pl.DataFrame, where: str) -> None:
    """Every bundle has a bundle_index, unique within its session."""
    _no_null(bundles, "bundle_index", where)
    _unique(bundles, ("session_id", "bundle_index"), where, "bundle_index")


def check_split_listing(split: pl.DataFrame, where: str) -> None:
    """A split table lists each session once (AICL split.csv: one row per session)."""
    rows = split.with_row_index("row").filter(pl.col("session_id").is_duplicated())
    if rows.height:
        first = rows.filter(pl.col("session_id") == rows["session_id"][0])
        (a, b), splits = first["row"].head(2).to_list(), first["split"].head(2).to_list()
        raise DataError(
            f"{where}: rows {a} and {b}: session {first['session_id'][0]} is listed twice "
            f"(splits {splits[0]!r} and {splits[1]!r}); a session belongs to one split"
        )


def _no_null(frame: pl.DataFrame, column: str, where: str) -> None:
    rows = frame.with_row_index("row").filter(pl.col(column).is_null())
    if rows.height:
        row = rows.row(0, named=True)
        raise DataError(f"{where}: row {row['row']}: session {row['session_id']} has no {column} (empty or null)")


def _unique(frame: pl.DataFrame, key: tuple[str, str], where: str, what: str) -> None:
    rows = frame.with_row_index("row").filter(pl.struct(*key).is_duplicated())
    if rows.height:
        session, value = rows[key[0]][0], rows[key[1]][0]
        a, b = rows.filter((pl.col(key[0]) == session) & (pl.col(key[1]) == value))["row"].head(2).to_list()
        raise DataError(f"{where}: rows {a} and {b}: session {session} has {what} {value} twice")


def _one_split(items: pl.DataFrame, where: str) -> None:
    first = pl.col("split").first().over("session_id")
    rows = items.with_row_index("row").filter(pl.col("split") != first)
    if rows.height:
        row = rows.row(0, named=True)
        other = items.with_row_index("row").filter(pl.col("session_id") == row["session_id"]).row(0, named=True)
        raise DataError(
            f"{where}: rows {other['row']} and {row['row']}: session {row['session_id']} is listed in two splits "
            f"({other['split']!r} and {row['split']!r}); a session belongs to one split"
        )


def require_columns(frame: pl.DataFrame, required: list[str], where: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {frame.columns}")


def check_items(items: pl.DataFrame, source: str) -> None:
    """The items table as a whole: columns, splits, item ids, keys."""
    require_columns(items, list(ITEM_COLUMNS), f"{source} items")
    bad_split = items.filter(pl.col("split").is_null() | ~pl.col("split").is_in(SPLITS))
    if bad_split.height:
        row = bad_split.row(0, named=True)
        raise DataError(f"{source} items: session {row['session_id']} has split {row['split']!r}; expected {SPLITS}")
    empty_id = items.filter(pl.col("item_id").is_null() | (pl.col("item_id") == ""))
    if empty_id.height:
        raise DataError(f"{source} items: session {empty_id['session_id'][0]} has an empty item_id")
    untitled = items.filter(pl.col("title").is_null())
    if untitled.height:  # the LLM reads titles: a null one would reach the prompt as the word None
        row = untitled.row(0, named=True)
        raise DataError(f"{source} items: item {row['item_id']!r} of session {row['session_id']} has no title "
                        f"({untitled.height} item(s) in all); every item needs the title the LLM reads")
    duplicated = items.filter(pl.struct("session_id", "item_id").is_duplicated())
    if duplicated.height:
        row = duplicated.row(0, named=True)
        raise DataError(f"{source} items: item {row['item_id']!r} appears twice in session {row['session_id']}")
    check_item_keys(items, f"{source} items")


def check_bundles(bundles: pl.DataFrame, items: pl.DataFrame, source: str) -> None:
    """The bundles table against the items: keys, sizes, sessions and items that exist."""
    require_columns(bundles, list(BUNDLE_COLUMNS), f"{source} bundles")
    check_bundle_keys(bundles, f"{source} bundles")
    # distinct, non-empty ids: "d,d" is one item, and an empty field is none
    distinct = pl.col("item_ids").list.eval(pl.element().filter(pl.element() != "")).list.unique().list.len()
    small = bundles.filter(pl.col("item_ids").is_null() | (distinct.fill_null(0) < 2))
    if small.height:
        row = small.row(0, named=True)
        n_items = len({i for i in row["item_ids"] or [] if i})
        raise DataError(
            f"{source} bundles: session {row['session_id']} bundle {row['bundle_index']} has "
            f"{n_items} distinct item(s); a bundle needs at least 2"
        )
    unknown_session = bundles.join(items.select("session_id").unique(), on="session_id", how="anti")
    if unknown_session.height:
        raise DataError(
            f"{source} bundles: session {unknown_session['session_id'][0]} has bundles but no items (empty session)"
        )
    stray = (
        bundles.explode("item_ids")
        .join(items.select("session_id", pl.col("item_id").alias("item_ids")), on=["session_id", "item_ids"], how="anti")
    )
    if stray.height:
        row = stray.row(0, named=True)
        raise DataError(
            f"{source} bundles: session {row['session_id']} bundle {row['bundle_index']} contains item "
            f"{row['item_ids']!r}, which is not in that session"
        )
