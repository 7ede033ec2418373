"""Sessions and their ground-truth bundles, in one canonical schema.

Two flat tables are the exchange format a user writes for their own data (CSV or Parquet):

    items.{csv,parquet}    session_id:int, split:str (train|test|valid), position:int (1-based),
                           item_id:str, title:str, category:str|null (leaf category, may be empty)
    bundles.{csv,parquet}  session_id:int, bundle_index:int, intent:str,
                           item_ids: list[str] (Parquet) or comma-joined str (CSV)

Inside the pipeline a session is one row (SESSION_COLUMNS) with parallel per-item lists, because every
stage (prompting, sampling, scoring) works one session at a time. The real domains are converted from the
AICL layer of the shared data: its sessions, split and de-duplicated ground truth, joined with BundleRec's
category paths for the leaf category (notes/paper.md section 3).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import polars as pl

from kd_bundle.config import DataConfig
from kd_bundle.data.checks import (
    BUNDLE_COLUMNS,
    ITEM_COLUMNS,
    SPLITS,
    DataError,
    check_bundle_keys,
    check_bundles,
    check_item_keys,
    check_items,
    check_split_listing,
    require_columns,
)

SESSION_COLUMNS = ["session_id", "split", "item_ids", "titles", "categories", "bundles", "intents"]
_LEVEL_SEPARATOR = re.compile(r",(?! )")  # category names contain ", " (e.g. "Clothing, Shoes & Jewelry")


# The shipped domains' files that load_sessions reads (the AICL layer and BundleRec's categories).
AICL_SOURCE_FILES = ("aicl/session_items.csv", "aicl/split.csv", "aicl/item_titles.csv",
                     "aicl/session_bundles_dedup.csv", "item_categories.csv", "item_idx_mapping.csv")


def source_files(cfg: DataConfig, data_root: Path) -> list[Path]:
    """The files `load_sessions(cfg, data_root)` reads: what a cache key and a run manifest hash (never a path)."""
    if cfg.custom_dir:
        tables = [_table_path(Path(cfg.custom_dir), stem) for stem in ("items", "bundles")]
        return [path for path in tables if path is not None]
    folder = Path(data_root) / cfg.domain
    return [folder / name for name in AICL_SOURCE_FILES if (folder / name).exists()]


def load_sessions(cfg: DataConfig, data_root: Path) -> pl.DataFrame:
    """All sessions of one real domain (or of `cfg.custom_dir`) in SESSION_COLUMNS, sliced as `cfg` asks."""
    source = Path(cfg.custom_dir) if cfg.custom_dir else Path(data_root) / cfg.domain
    items, bundles = read_exchange_tables(source) if cfg.custom_dir else read_aicl_domain(source)
    return slice_sessions(build_sessions(items, bundles, source=str(source)), cfg)


def read_aicl_domain(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Convert one domain of the shared data (AICL layer + BundleRec categories) to the two exchange tables."""
    aicl = folder / "aicl"
    ids = {"session_id": pl.Int64}
    session_items = read_csv_checked(aicl / "session_items.csv", ["session_id", "position", "item_asin"])
    session_items = cast_checked(session_items, {**ids, "position": pl.Int64}, aicl / "session_items.csv")
    check_item_keys(session_items, str(aicl / "session_items.csv"))
    split = read_csv_checked(aicl / "split.csv", ["session_id", "split", "prompt_titles"])
    split = cast_checked(split, ids, aicl / "split.csv")
    check_split_listing(split, str(aicl / "split.csv"))
    raw_titles = read_csv_checked(aicl / "item_titles.csv", ["item_asin", "title"])
    truth = read_csv_checked(aicl / "session_bundles_dedup.csv", ["session_id", "bundle_index", "intent", "item_asins"])
    truth = cast_checked(truth, {**ids, "bundle_index": pl.Int64}, aicl / "session_bundles_dedup.csv")
    check_bundle_keys(truth, str(aicl / "session_bundles_dedup.csv"))
    leaf = _leaf_categories(folder)

    prompt_titles = (
        split.filter(pl.col("prompt_titles").is_not_null() & (pl.col("prompt_titles") != ""))
        .with_columns(pl.col("prompt_titles").str.split("|").alias("prompt_title"))
        .explode("prompt_title")
        .with_columns(position=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("session_id"))
        .select("session_id", "position", "prompt_title")
    )
    items = (
        session_items.join(split.select("session_id", "split"), on="session_id", how="left")
        .join(prompt_titles, on=["session_id", "position"], how="left")
        .join(raw_titles, on="item_asin", how="left")
        .join(leaf, on="item_asin", how="left")
        .select(
            pl.col("session_id").cast(pl.Int64),
            pl.col("split").replace({"unassigned": "valid"}),
            pl.col("position").cast(pl.Int64),
            pl.col("item_asin").alias("item_id"),
            # AICL's lightly cleaned prompt titles where the session has them, the raw title otherwise.
            pl.coalesce("prompt_title", "title").map_elements(clean_title, return_dtype=pl.String).alias("title"),
            pl.col("category"),
        )
    )
    bundles = truth.select(
        pl.col("session_id").cast(pl.Int64),
        pl.col("bundle_index").cast(pl.Int64),
        pl.col("intent").fill_null("").str.strip_chars(),
        pl.col("item_asins").str.split(",").alias("item_ids"),
    )
    return items, bundles


def read_exchange_tables(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a user's own `items` and `bundles` tables (CSV or Parquet) and check their types."""
    items, items_path = _read_table(Path(folder), "items", list(ITEM_COLUMNS))
    items = cast_checked(items, ITEM_COLUMNS, items_path)
    check_item_keys(items, str(items_path))
    bundles, bundles_path = _read_table(Path(folder), "bundles", list(BUNDLE_COLUMNS))
    if bundles.schema["item_ids"] == pl.String:
        bundles = bundles.with_columns(pl.col("item_ids").str.split(","))
    bundles = cast_checked(bundles, BUNDLE_COLUMNS, bundles_path)
    check_bundle_keys(bundles, str(bundles_path))
    return items, bundles


def build_sessions(items: pl.DataFrame, bundles: pl.DataFrame, source: str = "<memory>") -> pl.DataFrame:
    """Check the exchange tables and fold them into one row per session (SESSION_COLUMNS)."""
    check_items(items, source)
    check_bundles(bundles, items, source)
    per_session = (
        items.sort("session_id", "position")
        .group_by("session_id", maintain_order=True)
        .agg(
            pl.col("split").first(),
            pl.col("item_id").alias("item_ids"),
            pl.col("title").alias("titles"),
            pl.col("category").alias("categories"),
        )
    )
    truth = (
        bundles.sort("session_id", "bundle_index")
        .group_by("session_id", maintain_order=True)
        .agg(pl.col("item_ids").alias("bundles"), pl.col("intent").alias("intents"))
    )
    return (
        per_session.join(truth, on="session_id", how="left")
        .with_columns(
            pl.col("bundles").fill_null(pl.lit([], dtype=pl.List(pl.List(pl.String)))),
            pl.col("intents").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )
        .select(SESSION_COLUMNS)
        .sort("session_id")
    )


def slice_sessions(sessions: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Bound the train and test splits for short runs. The test slice keeps the AICL length stratification."""
    train = sessions.filter(pl.col("split") == "train")
    if cfg.max_train_sessions is not None:
        train = train.head(cfg.max_train_sessions)
    test = sessions.filter(pl.col("split") == "test")
    if cfg.max_test_sessions is not None and cfg.max_test_sessions < test.height:
        test = (
            test.with_columns(length=pl.col("item_ids").list.len())
            .sample(fraction=1.0, shuffle=True, seed=cfg.split_seed)
            .with_columns(turn=pl.int_range(pl.len()).over("length"))
            .sort("turn", "length")  # round-robin over lengths: every length gets its share
            .head(cfg.max_test_sessions)
            .drop("length", "turn")
        )
    valid = sessions.filter(pl.col("split") == "valid")
    return pl.concat([train, test, valid]).sort("session_id")


def split_of(sessions: pl.DataFrame, split: str) -> pl.DataFrame:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    return sessions.filter(pl.col("split") == split)


def leaf_category(paths: str | None) -> str | None:
    """`[[A,B,C],[A,D]]` -> "C": the last level of the longest path; None for `[[]]` or nothing."""
    if paths is None:
        return None
    body = paths.strip()
    if body.startswith("[[") and body.endswith("]]"):
        body = body[2:-2]
    best: list[str] = []
    for path in body.split("],["):
        levels = [level.strip() for level in _LEVEL_SEPARATOR.split(path) if level.strip()]
        if len(levels) > len(best):
            best = levels
    return best[-1] if best else None


def _leaf_categories(folder: Path) -> pl.DataFrame:
    """item_asin -> leaf category, from BundleRec's item_categories (bundle items only) via the ASIN mapping."""
    categories = read_csv_checked(folder / "item_categories.csv", ["item ID", "categories"])
    mapping = read_csv_checked(folder / "item_idx_mapping.csv", ["item ID", "source ID"])
    return (
        categories.join(mapping, on="item ID", how="inner")
        .select(
            pl.col("source ID").alias("item_asin"),
            pl.col("categories").map_elements(leaf_category, return_dtype=pl.String).alias("category"),
        )
        .unique("item_asin", keep="first")
    )


def clean_title(title: str | None) -> str:
    """A title as the LLM reads it: HTML entities decoded (`&amp;` -> `&`), surrounding space removed."""
    return html.unescape(title or "").strip()


def read_csv_checked(path: Path, required: list[str]) -> pl.DataFrame:
    """A CSV file as all-string columns; a missing file or column is a one-line DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        frame = pl.read_csv(path, infer_schema=False)  # all strings; types are checked where they matter
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
    require_columns(frame, required, str(path))
    return frame


_TABLE_READERS = {".parquet": pl.read_parquet, ".csv": lambda p: pl.read_csv(p, infer_schema=False)}


def _table_path(folder: Path, stem: str) -> Path | None:
    """The file of one exchange table: `<stem>.parquet`, else `<stem>.csv`, else None."""
    return next((folder / f"{stem}{suffix}" for suffix in _TABLE_READERS if (folder / f"{stem}{suffix}").exists()),
                None)


def _read_table(folder: Path, stem: str, required: list[str]) -> tuple[pl.DataFrame, Path]:
    path = _table_path(folder, stem)
    if path is None:
        raise DataError(f"{folder}: neither {stem}.parquet nor {stem}.csv found")
    try:
        frame = _TABLE_READERS[path.suffix](path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({exc})") from exc
    require_columns(frame, required, str(path))
    return frame, path


def cast_checked(frame: pl.DataFrame, schema: dict[str, pl.DataType], where: Path) -> pl.DataFrame:
    """Cast columns to `schema`; a value that does not fit is a DataError naming the file, column and first row."""
    out = frame
    for column, dtype in schema.items():
        try:
            out = out.with_columns(pl.col(column).cast(dtype, strict=True))
        except pl.exceptions.PolarsError:
            raise DataError(f"{where}: column {column!r} must be {dtype}; {_first_bad_value(out, column, dtype)}") from None
    return out


def _first_bad_value(frame: pl.DataFrame, column: str, dtype: pl.DataType) -> str:
    try:
        bad = frame.with_row_index("row").filter(
            pl.col(column).cast(dtype, strict=False).is_null() & pl.col(column).is_not_null()
        )
    except pl.exceptions.PolarsError:  # no value of this type casts at all (e.g. integers where lists belong)
        return f"found type {frame.schema[column]}"
    if bad.height == 0:
        return f"found type {frame.schema[column]}"
    row = bad.row(0, named=True)
    return f"row {row['row']} has {row[column]!r}"
