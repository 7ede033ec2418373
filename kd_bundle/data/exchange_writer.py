"""Write the two exchange tables into a folder so that `DataConfig(custom_dir=...)` is certain to load them.

The tables are written into a staging folder inside the target, read back with the loader itself
(`read_exchange_tables` + `build_sessions`) and compared with what was meant; only then are they moved into place
with `os.replace`, so a failed or interrupted write leaves no half table. A folder that already holds an items or
bundles table (either format) is refused: overwriting it could lose someone's data, and a leftover table of the
other format would shadow the new one (the loader prefers Parquet).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import polars as pl

from kd_bundle.data.checks import BUNDLE_COLUMNS, ITEM_COLUMNS, DataError
from kd_bundle.data.sessions import build_sessions, read_exchange_tables

FORMATS = ("parquet", "csv")
TABLES = ("items", "bundles")


def existing_tables(out: Path) -> list[Path]:
    """The items/bundles tables (any format) already in `out`."""
    return [out / f"{stem}.{fmt}" for stem in TABLES for fmt in FORMATS if (out / f"{stem}.{fmt}").exists()]


def refuse_existing_tables(out: Path) -> None:
    """A DataError when `out` is a file or already holds an items or bundles table."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    found = existing_tables(out)
    if found:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{out}: already holds {names}; nothing was written (remove them or choose another folder)")


def write_exchange_tables(
    items: pl.DataFrame, bundles: pl.DataFrame, out: Path, fmt: Literal["parquet", "csv"] = "parquet"
) -> list[Path]:
    """Check, write, read back and move `items`/`bundles` into `out` (created); the paths written."""
    out = Path(out)
    if fmt not in FORMATS:
        raise DataError(f"unknown table format {fmt!r}; expected one of {FORMATS}")
    refuse_existing_tables(out)
    items, bundles = items.select(list(ITEM_COLUMNS)), bundles.select(list(BUNDLE_COLUMNS))
    build_sessions(items, bundles, source="<tables to write>")
    if fmt == "csv":
        _refuse_commas_in_ids(bundles)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=out))
    try:
        if fmt == "parquet":
            items.write_parquet(staging / "items.parquet")
            bundles.write_parquet(staging / "bundles.parquet")
        else:
            items.write_csv(staging / "items.csv")
            bundles.with_columns(pl.col("item_ids").list.join(",")).write_csv(staging / "bundles.csv")
        read_items, read_bundles = read_exchange_tables(staging)
        build_sessions(read_items, read_bundles, source=str(staging))
        _same_or_refuse(read_items.select(list(ITEM_COLUMNS)), items, "items", fmt)
        _same_or_refuse(read_bundles.select(list(BUNDLE_COLUMNS)), bundles, "bundles", fmt)
        refuse_existing_tables(out)  # again: someone may have written there while we converted
        written = []
        for stem in TABLES:
            os.replace(staging / f"{stem}.{fmt}", out / f"{stem}.{fmt}")
            written.append(out / f"{stem}.{fmt}")
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_commas_in_ids(bundles: pl.DataFrame) -> None:
    # CSV joins a bundle's item ids with commas, so an id holding one would read back as two items.
    bad = bundles.explode("item_ids").filter(pl.col("item_ids").str.contains(",", literal=True))
    if bad.height:
        raise DataError(
            f"item id {bad['item_ids'][0]!r} (session {bad['session_id'][0]}) contains a comma, which CSV bundles "
            f"cannot hold; write Parquet instead"
        )


def _same_or_refuse(read_back: pl.DataFrame, meant: pl.DataFrame, table: str, fmt: str) -> None:
    if read_back.equals(meant):
        return
    for column in meant.columns:
        if read_back.height != meant.height or not read_back[column].equals(meant[column]):
            raise DataError(f"{table}.{fmt} would not read back as written (column {column!r}); nothing was written")
    raise DataError(f"{table}.{fmt} would not read back as written; nothing was written")
