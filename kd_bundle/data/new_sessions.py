"""Sessions that have no bundles yet: the input of `python -m kd_bundle generate`.

One `items` table (CSV or Parquet), the exchange table of docs/data.md without its `split` column (a `split` there
is ignored) and without a bundles table:

    session_id:int, position:int (1-based), item_id:str, title:str, category:str|null (optional)

The loader's own checks apply (kd_bundle.data.checks: one line naming the file, column or row). Two more, because
the student reads titles and a bundle needs two products: an item without a title is an unknown item, and a
session of one item cannot hold a bundle; both are refused rather than answered with a guess.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kd_bundle.data.checks import ITEM_COLUMNS, DataError, check_items, require_columns
from kd_bundle.data.sessions import build_sessions, cast_checked

NEW_ITEM_COLUMNS = ["session_id", "position", "item_id", "title"]  # required; `category` is optional
NEW_SPLIT = "test"  # the split the new sessions take inside the pipeline: queries, never retrieved from


def read_new_sessions(path: Path) -> pl.DataFrame:
    """The sessions of an items table without bundles, in SESSION_COLUMNS (split "test", no bundles)."""
    path = Path(path)
    items = _read_items(path)
    require_columns(items, NEW_ITEM_COLUMNS, str(path))
    if items.height == 0:
        raise DataError(f"{path}: no sessions (the table has a header but no rows)")
    if "category" not in items.columns:
        items = items.with_columns(category=pl.lit(None, dtype=pl.String))
    items = items.with_columns(split=pl.lit(NEW_SPLIT)).select(list(ITEM_COLUMNS))
    items = cast_checked(items, ITEM_COLUMNS, path)
    check_items(items, str(path))  # positions, duplicate items, empty item ids
    _refuse_untitled(items, path)
    _refuse_single_items(items, path)
    no_bundles = pl.DataFrame(schema={"session_id": pl.Int64, "bundle_index": pl.Int64, "intent": pl.String,
                                      "item_ids": pl.List(pl.String)})
    return build_sessions(items, no_bundles, source=str(path))


def _read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema=False)  # all strings; types are checked by cast_checked


def _read_items(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix not in (".csv", ".parquet"):
        raise DataError(f"{path}: expected a .csv or .parquet items table")
    try:
        return _read_table(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({exc})") from exc


def _refuse_untitled(items: pl.DataFrame, path: Path) -> None:
    untitled = items.with_row_index("row").filter(pl.col("title").is_null() | (pl.col("title").str.strip_chars() == ""))
    if untitled.height:
        row = untitled.row(0, named=True)
        raise DataError(
            f"{path}: row {row['row']}: item {row['item_id']!r} of session {row['session_id']} has no title "
            f"({untitled.height} item(s) without one); the student knows an item only by its title"
        )


def _refuse_single_items(items: pl.DataFrame, path: Path) -> None:
    rows = items.with_row_index("row").filter(pl.len().over("session_id") < 2)
    if rows.height:
        row = rows.row(0, named=True)
        raise DataError(
            f"{path}: row {row['row']}: session {row['session_id']} has one item ({rows.height} such session(s)); "
            "a bundle needs at least 2 products"
        )
