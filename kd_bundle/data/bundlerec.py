"""`python -m kd_bundle convert bundlerec SRC OUT`: BundleRec's release layout -> the exchange tables.

BundleRec (github.com/BundleRec/bundle_recommendation, `dataset/<domain>/`) ships sessions and their bundles as six
CSV files keyed by 0-based integer ids. The conversion keeps those ids (item ids as strings), so an output row can be
traced back to its source row. Titles and category paths cover bundle items only: other items keep an empty title
and no category rather than an invented one, and the CLI says how many. A session without a bundle, or with fewer
than 2 items, teaches and tests nothing and is dropped; so is a second bundle with the same items in one session
(the first one listed keeps its intent), because a duplicated ground truth counts one detected bundle twice.

The split is drawn here (BundleRec has none): see `assign_splits`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field, ValidationError, model_validator

from kd_bundle.data.checks import BUNDLE_COLUMNS, ITEM_COLUMNS, SPLITS, DataError
from kd_bundle.data.exchange_writer import FORMATS, refuse_existing_tables, write_exchange_tables
from kd_bundle.data.sessions import cast_checked, clean_title, leaf_category, read_csv_checked

# file -> the columns the conversion reads (others, such as user tables, are ignored)
SOURCE_FILES = {
    "session_item.csv": ["session ID", "item ID"],
    "session_bundle.csv": ["session ID", "bundle ID"],
    "bundle_item.csv": ["bundle ID", "item ID"],
    "bundle_intent.csv": ["bundle ID", "intent"],
    "item_titles.csv": ["item ID", "titles"],
    "item_categories.csv": ["item ID", "categories"],
}
_INTEGER_IDS = ("session ID", "bundle ID")


class ConvertConfig(BaseModel, frozen=True, extra="forbid"):
    """How a converted release is split and bounded."""

    seed: int = Field(0, ge=0, description="Seed of the shuffle within each session length.")
    test_ratio: float = Field(0.2, ge=0.0, lt=1.0, description="Share of each session length that goes to test.")
    valid_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of each session length that goes to valid.")
    max_sessions: int | None = Field(None, ge=1, description="Keep the N kept sessions with the lowest ids.")

    @model_validator(mode="after")
    def _leaves_a_training_split(self) -> ConvertConfig:
        if self.test_ratio + self.valid_ratio >= 1.0:
            raise ValueError(f"test_ratio + valid_ratio is {self.test_ratio + self.valid_ratio:g}; it must be below 1")
        return self


@dataclass(frozen=True)
class Conversion:
    """The exchange tables of a release, and what was left out of them (counts)."""

    items: pl.DataFrame
    bundles: pl.DataFrame
    sessions_without_bundle: int
    sessions_too_short: int
    sessions_beyond_max: int
    duplicate_bundles: int
    small_bundles: int
    items_without_title: int
    items_without_category: int


def read_bundlerec(src: Path) -> dict[str, pl.DataFrame]:
    """The six source tables of SRC (file name -> frame), ids checked: integers where BundleRec has them, none empty."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (expected BundleRec's dataset/<domain>/ CSV files)")
    tables = {}
    for name, columns in SOURCE_FILES.items():
        path = src / name
        frame = read_csv_checked(path, columns).select(columns)
        frame = cast_checked(frame, {c: pl.Int64 for c in columns if c in _INTEGER_IDS}, path)
        for column in (c for c in columns if c.endswith(" ID")):
            empty = frame.with_row_index("row").filter(pl.col(column).is_null())
            if empty.height:
                raise DataError(f"{path}: row {empty['row'][0]} has no {column!r} (empty field)")
        tables[name] = frame
    return tables


def convert_bundlerec(tables: dict[str, pl.DataFrame], cfg: ConvertConfig, src: Path) -> Conversion:
    """The exchange tables (ITEM_COLUMNS, BUNDLE_COLUMNS) of the tables `read_bundlerec` returned for `src`."""
    session_items = _session_items(tables["session_item.csv"], src / "session_item.csv")
    all_bundles = _session_bundles(tables, session_items, src)
    bundles = all_bundles.filter(~pl.col("small") & ~pl.col("duplicate"))

    lengths = session_items.group_by("session_id").agg(length=pl.len())
    too_short = lengths.filter(pl.col("length") < 2)
    with_bundle = bundles.select("session_id").unique()
    eligible = lengths.filter(pl.col("length") >= 2)
    kept = eligible.join(with_bundle, on="session_id", how="semi").sort("session_id")
    without_bundle = eligible.height - kept.height
    beyond_max = 0
    if cfg.max_sessions is not None and kept.height > cfg.max_sessions:
        beyond_max = kept.height - cfg.max_sessions
        kept = kept.head(cfg.max_sessions)
    if kept.height == 0:
        raise DataError(f"{src}: no session has a bundle and at least 2 items; nothing to convert")

    titles = tables["item_titles.csv"].unique("item ID", keep="first", maintain_order=True)
    categories = tables["item_categories.csv"].unique("item ID", keep="first", maintain_order=True)
    items = (
        session_items.join(kept.select("session_id"), on="session_id", how="semi")
        .join(assign_splits(kept, cfg), on="session_id", how="left")
        .join(titles.rename({"item ID": "item_id"}), on="item_id", how="left")
        .join(categories.rename({"item ID": "item_id"}), on="item_id", how="left")
        .with_columns(
            pl.col("titles").map_elements(clean_title, return_dtype=pl.String, skip_nulls=False).alias("title"),
            pl.col("categories").map_elements(leaf_category, return_dtype=pl.String).alias("category"),
        )
        .select(list(ITEM_COLUMNS))
        .cast(ITEM_COLUMNS)
        .sort("session_id", "position")
    )
    bundles = (
        bundles.join(kept.select("session_id"), on="session_id", how="semi")
        .sort("session_id", "order")
        .with_columns(bundle_index=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("session_id"))
        .select(list(BUNDLE_COLUMNS))
        .cast(BUNDLE_COLUMNS)
    )
    dropped_bundles = all_bundles.join(kept, on="session_id", how="semi")  # of the sessions written
    distinct_items = items.unique("item_id")
    return Conversion(
        items=items,
        bundles=bundles,
        sessions_without_bundle=without_bundle,
        sessions_too_short=too_short.height,
        sessions_beyond_max=beyond_max,
        duplicate_bundles=dropped_bundles["duplicate"].sum(),
        small_bundles=dropped_bundles["small"].sum(),
        items_without_title=distinct_items.filter(pl.col("title") == "").height,
        items_without_category=distinct_items.filter(pl.col("category").is_null()).height,
    )


def assign_splits(lengths: pl.DataFrame, cfg: ConvertConfig) -> pl.DataFrame:
    """session_id -> split, stratified by session length (`lengths`: session_id, length).

    Within each length the sessions are shuffled with the seed; the first round(n * test_ratio) go to test, the next
    round(n * valid_ratio) to valid, the rest to train, so every split has the length mix of the whole. Rounding is
    per length (half up), so the totals can differ from the ratios by a session or two per length.
    """
    parts = [pl.DataFrame(schema={"session_id": pl.Int64, "split": pl.String})]
    for length in sorted(lengths["length"].unique().to_list()):
        group = lengths.filter(pl.col("length") == length).sort("session_id")
        n = group.height
        n_test = int(n * cfg.test_ratio + 0.5)
        n_valid = min(int(n * cfg.valid_ratio + 0.5), n - n_test)
        labels = ["test"] * n_test + ["valid"] * n_valid + ["train"] * (n - n_test - n_valid)
        shuffled = group.sample(fraction=1.0, shuffle=True, seed=cfg.seed).select(pl.col("session_id").cast(pl.Int64))
        parts.append(shuffled.with_columns(split=pl.Series(labels, dtype=pl.String)))
    return pl.concat(parts).sort("session_id")


def _session_items(session_item: pl.DataFrame, path: Path) -> pl.DataFrame:
    """session_id, position (1-based, in file order), item_id; an item listed twice in a session is refused."""
    items = session_item.with_row_index("row").select(
        "row",
        pl.col("session ID").alias("session_id"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("session ID").alias("position"),
        pl.col("item ID").alias("item_id"),
    )
    twice = items.filter(pl.struct("session_id", "item_id").is_duplicated())
    if twice.height:
        row = twice.row(0, named=True)
        rows = twice.filter((pl.col("session_id") == row["session_id"]) & (pl.col("item_id") == row["item_id"]))
        a, b = rows["row"].head(2).to_list()
        raise DataError(f"{path}: rows {a} and {b}: session {row['session_id']} lists item {row['item_id']!r} twice")
    return items.drop("row")


def _session_bundles(tables: dict[str, pl.DataFrame], session_items: pl.DataFrame, src: Path) -> pl.DataFrame:
    """One row per listed bundle: session_id, order, intent, item_ids, and whether it is to be dropped because it is
    `small` (fewer than 2 distinct items) or a `duplicate` (an earlier bundle of its session has the same items)."""
    listing = tables["session_bundle.csv"].with_row_index("order").rename(
        {"session ID": "session_id", "bundle ID": "bundle_id"}
    )
    members = (
        tables["bundle_item.csv"]
        .group_by("bundle ID", maintain_order=True)
        .agg(pl.col("item ID").unique(maintain_order=True).alias("item_ids"))
        .rename({"bundle ID": "bundle_id"})
    )
    intents = tables["bundle_intent.csv"].rename({"bundle ID": "bundle_id"})
    _refuse_twice(intents, "bundle_id", src / "bundle_intent.csv", "bundle ID")
    unknown = listing.join(session_items.select("session_id").unique(), on="session_id", how="anti")
    if unknown.height:
        raise DataError(
            f"{src / 'session_bundle.csv'}: row {unknown['order'][0]}: session {unknown['session_id'][0]} has a bundle "
            f"but no items in session_item.csv"
        )
    empty = listing.join(members, on="bundle_id", how="anti")
    if empty.height:
        raise DataError(
            f"{src / 'bundle_item.csv'}: bundle {empty['bundle_id'][0]} (session {empty['session_id'][0]} in "
            f"session_bundle.csv) has no items"
        )
    bundles = (
        listing.join(members, on="bundle_id", how="left")
        .join(intents, on="bundle_id", how="left")
        .with_columns(pl.col("intent").fill_null("").str.strip_chars())
    )
    in_session = session_items.select("session_id", pl.col("item_id").alias("item_ids"))
    stray = bundles.explode("item_ids").join(in_session, on=["session_id", "item_ids"], how="anti")
    if stray.height:
        row = stray.row(0, named=True)
        raise DataError(
            f"{src / 'bundle_item.csv'}: bundle {row['bundle_id']} contains item {row['item_ids']!r}, which is not in "
            f"its session {row['session_id']} (session_item.csv)"
        )
    small = pl.col("item_ids").list.len() < 2
    repeated = ~pl.struct("session_id", pl.col("item_ids").list.sort()).is_first_distinct()
    return bundles.sort("order").with_columns(small=small, duplicate=~small & repeated)


def _refuse_twice(frame: pl.DataFrame, column: str, path: Path, name: str) -> None:
    twice = frame.with_row_index("row").filter(pl.col(column).is_duplicated())
    if twice.height:
        a, b = twice.filter(pl.col(column) == twice[column][0])["row"].head(2).to_list()
        raise DataError(f"{path}: rows {a} and {b}: {name} {twice[column][0]} is listed twice")


def summary(conversion: Conversion, written: list[Path]) -> str:
    """The CLI's final line: what went where, and what was dropped and why."""
    per_split = []
    for split in SPLITS:
        sessions = conversion.items.filter(pl.col("split") == split)["session_id"].unique()
        n_bundles = conversion.bundles.filter(pl.col("session_id").is_in(sessions.implode())).height
        per_split.append(f"{split} {sessions.len()} sessions / {n_bundles} bundles")
    c = conversion
    return (
        f"wrote {', '.join(str(p) for p in written)}: {', '.join(per_split)}; "
        f"dropped {c.sessions_without_bundle} sessions with no bundle, {c.sessions_too_short} with fewer than 2 items, "
        f"{c.sessions_beyond_max} beyond --max-sessions, {c.duplicate_bundles} duplicate bundles (same items in one "
        f"session), {c.small_bundles} bundles of fewer than 2 items; {c.items_without_title} items have no title "
        f"and {c.items_without_category} no category in the source (left empty)"
    )


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_bundle convert", description="Convert a raw dataset release into the exchange tables."
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="{bundlerec}")
    bundlerec = sources.add_parser(
        "bundlerec",
        help="BundleRec's dataset/<domain>/ CSV files",
        description="Convert BundleRec's release layout (session_item, session_bundle, bundle_item, bundle_intent, "
        "item_titles, item_categories) into items/bundles tables that DataConfig(custom_dir=OUT) reads.",
    )
    bundlerec.add_argument("src", type=Path, help="folder with BundleRec's CSV files")
    bundlerec.add_argument("out", type=Path, help="folder to write items/bundles into (must not hold them yet)")
    bundlerec.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    bundlerec.add_argument("--test-ratio", type=float, default=0.2, help="share of each length in test (default 0.2)")
    bundlerec.add_argument("--valid-ratio", type=float, default=0.1, help="share of each length in valid (0.1)")
    bundlerec.add_argument("--max-sessions", type=int, default=None, help="keep the N lowest session ids (all)")
    bundlerec.add_argument("--format", choices=FORMATS, default="parquet", help="table format (default parquet)")
    args = parser.parse_args(argv)
    try:
        cfg = ConvertConfig(
            seed=args.seed, test_ratio=args.test_ratio, valid_ratio=args.valid_ratio, max_sessions=args.max_sessions
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]).replace("_", "-")
        bundlerec.error(f"--{where}: {error['msg']}" if where else error["msg"])
    fmt: Literal["parquet", "csv"] = args.format
    refuse_existing_tables(args.out)  # before the work, not only after it
    conversion = convert_bundlerec(read_bundlerec(args.src), cfg, Path(args.src))
    written = write_exchange_tables(conversion.items, conversion.bundles, args.out, fmt)
    print(summary(conversion, written))
    return 0
