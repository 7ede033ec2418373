"""`convert bundlerec`: the real Electronic release against the data README, the split, the writer, and every refusal.

Expected counts come from ../shared/data/README.md ("Sizes": 1145 sessions, 893 with a bundle, 1750 bundles); the
duplicate bundles and per-item facts are read back from the shared CSV files with the csv module, independently of
the polars converter. The refusals run on a tiny release written into tmp_path.
"""

from __future__ import annotations

import csv
import html
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.__main__ import main
from kd_bundle.config import DataConfig, settings
from kd_bundle.data.bundlerec import (
    SOURCE_FILES,
    Conversion,
    ConvertConfig,
    assign_splits,
    convert_bundlerec,
    read_bundlerec,
)
from kd_bundle.data.checks import SPLITS, DataError
from kd_bundle.data.exchange_writer import write_exchange_tables
from kd_bundle.data.sessions import load_sessions

DATA_ROOT = settings().data_root
ELECTRONIC = DATA_ROOT / "electronic"
# shared/data/README.md "Sizes", Electronic: BundleRec sessions / with >= 1 bundle, BundleRec bundles
DOCUMENTED_SESSIONS, DOCUMENTED_WITH_BUNDLE, DOCUMENTED_BUNDLES = 1145, 893, 1750


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def electronic() -> Conversion:
    return convert_bundlerec(read_bundlerec(ELECTRONIC), ConvertConfig(), ELECTRONIC)


@pytest.fixture(scope="module")
def source() -> dict[str, dict]:
    """The Electronic release read with the csv module: session -> items, session -> bundles, bundle -> items."""
    session_items: dict[str, list[str]] = defaultdict(list)
    for row in _csv_rows(ELECTRONIC / "session_item.csv"):
        session_items[row["session ID"]].append(row["item ID"])
    session_bundles: dict[str, list[str]] = defaultdict(list)
    for row in _csv_rows(ELECTRONIC / "session_bundle.csv"):
        session_bundles[row["session ID"]].append(row["bundle ID"])
    bundle_items: dict[str, list[str]] = defaultdict(list)
    for row in _csv_rows(ELECTRONIC / "bundle_item.csv"):
        bundle_items[row["bundle ID"]].append(row["item ID"])
    return {"session_items": session_items, "session_bundles": session_bundles, "bundle_items": bundle_items}


# ---------------------------------------------------------------- the real Electronic release


def test_electronic_counts_match_the_data_readme(electronic: Conversion, source: dict[str, dict]) -> None:
    duplicates = 0
    for bundles in source["session_bundles"].values():
        seen = set()
        for bundle in bundles:
            key = frozenset(source["bundle_items"][bundle])
            duplicates += key in seen
            seen.add(key)
    assert len(source["session_items"]) == DOCUMENTED_SESSIONS  # the files are the documented release
    assert electronic.items["session_id"].n_unique() == DOCUMENTED_WITH_BUNDLE
    assert electronic.sessions_without_bundle == DOCUMENTED_SESSIONS - DOCUMENTED_WITH_BUNDLE
    assert electronic.sessions_too_short == 0 and electronic.sessions_beyond_max == 0  # 2..10 items per session
    assert duplicates > 0 and electronic.duplicate_bundles == duplicates
    assert electronic.bundles.height + electronic.duplicate_bundles + electronic.small_bundles == DOCUMENTED_BUNDLES


def test_electronic_items_keep_session_order_titles_and_categories(electronic: Conversion, source: dict) -> None:
    titles = {r["item ID"]: html.unescape(r["titles"]).strip() for r in _csv_rows(ELECTRONIC / "item_titles.csv")}
    categorised = {r["item ID"] for r in _csv_rows(ELECTRONIC / "item_categories.csv")}
    for session_id, group in electronic.items.group_by("session_id"):
        assert group.sort("position")["item_id"].to_list() == source["session_items"][str(session_id[0])]
        assert group.sort("position")["position"].to_list() == list(range(1, group.height + 1))
    for row in electronic.items.iter_rows(named=True):
        assert row["title"] == titles.get(row["item_id"], "")
        assert (row["category"] is not None) == (row["item_id"] in categorised)  # never an invented category
    in_kept = set(electronic.items["item_id"])
    assert electronic.items_without_title == len(in_kept - set(titles)) > 0
    assert electronic.items_without_category == len(in_kept - categorised)


def test_electronic_bundles_are_distinct_within_a_session(electronic: Conversion) -> None:
    keys = electronic.bundles.with_columns(pl.col("item_ids").list.sort())
    assert not keys.select(pl.struct("session_id", "item_ids").is_duplicated().any()).item()
    per_session = electronic.bundles.group_by("session_id").agg(pl.col("bundle_index"))
    assert all(sorted(ix) == list(range(1, len(ix) + 1)) for ix in per_session["bundle_index"])


def _length_counts(conversion: Conversion) -> dict[tuple[str, int], int]:
    lengths = conversion.items.group_by("session_id").agg(pl.col("split").first(), length=pl.len())
    return {(s, n): c for s, n, c in lengths.group_by("split", "length").len().iter_rows()}


def test_every_split_has_the_length_mix_of_the_whole(electronic: Conversion) -> None:
    counts = _length_counts(electronic)
    cfg = ConvertConfig()
    for length in range(2, 11):
        whole = sum(counts.get((split, length), 0) for split in SPLITS)
        for split, ratio in (("test", cfg.test_ratio), ("valid", cfg.valid_ratio)):
            assert abs(counts.get((split, length), 0) - whole * ratio) <= 0.5  # only rounding within a length
        assert counts[("train", length)] > counts.get(("test", length), 0) > counts.get(("valid", length), 0) > 0


def test_the_split_is_reproducible_by_seed() -> None:
    lengths = pl.DataFrame({"session_id": range(300), "length": [2 + i % 9 for i in range(300)]})
    first = assign_splits(lengths, ConvertConfig(seed=7))
    assert assign_splits(lengths, ConvertConfig(seed=7)).equals(first)
    other = assign_splits(lengths, ConvertConfig(seed=8))
    assert not other.equals(first)
    assert other.group_by("split").len().sort("split").equals(first.group_by("split").len().sort("split"))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_written_tables_load_through_data_config(electronic: Conversion, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "electronic"
    written = write_exchange_tables(electronic.items, electronic.bundles, out, fmt)
    expected = [f"bundles.{fmt}", f"items.{fmt}"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written) == expected  # no staging left
    sessions = load_sessions(DataConfig(custom_dir=str(out)), DATA_ROOT)
    assert sessions.height == DOCUMENTED_WITH_BUNDLE
    assert sessions["bundles"].list.len().sum() == electronic.bundles.height
    split_sizes = dict(sessions.group_by("split").len().iter_rows())
    assert split_sizes == dict(electronic.items.unique("session_id").group_by("split").len().iter_rows())
    assert all(title is not None for titles in sessions["titles"] for title in titles)  # "" stays "" in CSV too


# ---------------------------------------------------------------- a tiny release: drops, refusals, CLI

TINY = {
    "session_item.csv": [[0, 10], [0, 11], [0, 12], [1, 20], [2, 30], [2, 31], [3, 40], [3, 41]],
    "session_bundle.csv": [[0, 100], [0, 101], [0, 102], [2, 200], [3, 300]],
    "bundle_item.csv": [[100, 10], [100, 11], [101, 11], [101, 10], [102, 12], [200, 30], [200, 31], [300, 40]],
    "bundle_intent.csv": [[100, " Camera kit\n"], [101, "Same items, other words"], [102, "One item"], [200, "Pair"],
                          [300, "Lonely"]],
    "item_titles.csv": [[10, "Camera &amp; lens"], [11, "Battery"], [30, "Cable"], [31, "Adapter"]],
    "item_categories.csv": [[10, "[[Electronics,Camera & Photo,Digital Cameras]]"], [11, "[[Electronics,Batteries]]"],
                            [30, "[[]]"], [31, "[[Electronics,Cables]]"]],
}


def _tiny(folder: Path, drop_column: tuple[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in TINY.items():
        header = [c for c in SOURCE_FILES[name] if drop_column != (name, c)]
        keep = [i for i, c in enumerate(SOURCE_FILES[name]) if drop_column != (name, c)]
        with open(folder / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([[row[i] for i in keep] for row in rows])
    return folder


def test_tiny_release_drops_what_teaches_nothing(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "src")
    conversion = convert_bundlerec(read_bundlerec(src), ConvertConfig(test_ratio=0.0, valid_ratio=0.0), src)
    assert conversion.items["session_id"].unique().sort().to_list() == [0, 2]
    assert (conversion.sessions_too_short, conversion.sessions_without_bundle) == (1, 1)  # session 1; session 3
    # 101 repeats 100, 102 has one item; 300 (one item) is not counted: its session is dropped as without a bundle
    assert (conversion.duplicate_bundles, conversion.small_bundles) == (1, 1)
    assert conversion.bundles.rows() == [(0, 1, "Camera kit", ["10", "11"]), (2, 1, "Pair", ["30", "31"])]
    titles = dict(zip(conversion.items["item_id"], conversion.items["title"]))
    categories = dict(zip(conversion.items["item_id"], conversion.items["category"]))
    assert titles == {"10": "Camera & lens", "11": "Battery", "12": "", "30": "Cable", "31": "Adapter"}
    assert categories == {"10": "Digital Cameras", "11": "Batteries", "12": None, "30": None, "31": "Cables"}
    assert (conversion.items_without_title, conversion.items_without_category) == (1, 2)


def test_cli_converts_and_says_what_it_wrote_and_dropped(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    out = tmp_path / "out"
    args = ["convert", "bundlerec", str(ELECTRONIC), str(out), "--max-sessions", "200", "--format", "csv"]
    assert main([*args, "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip()
    sessions = load_sessions(DataConfig(custom_dir=str(out)), DATA_ROOT)
    assert sessions.height == 200
    for split in SPLITS:
        part = sessions.filter(pl.col("split") == split)
        assert f"{split} {part.height} sessions / {part['bundles'].list.len().sum()} bundles" in line
    assert "dropped 252 sessions with no bundle" in line and f"{DOCUMENTED_WITH_BUNDLE - 200} beyond" in line
    assert "\n" not in line and str(out / "items.csv") in line

    again = tmp_path / "again"
    assert main([*args[:3], str(again), *args[4:], "--seed", "3"]) == 0
    assert (again / "items.csv").read_bytes() == (out / "items.csv").read_bytes()  # same seed, same split


def test_cli_refuses_an_out_folder_that_holds_tables(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    src, out = _tiny(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    (out / "items.parquet").write_bytes(b"someone's table")
    assert main(["convert", "bundlerec", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "already holds items.parquet" in err
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet"]
    assert (out / "items.parquet").read_bytes() == b"someone's table"


@pytest.mark.parametrize(
    ("file", "column"),
    [("bundle_intent.csv", "intent"), ("session_item.csv", "item ID"), ("item_titles.csv", "titles")],
)
def test_cli_missing_column_is_one_line_naming_file_and_column(tmp_path, monkeypatch, capsys, file, column) -> None:
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    src = _tiny(tmp_path / "src", drop_column=(file, column))
    assert main(["convert", "bundlerec", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src / file) in err and repr(column) in err
    assert not (tmp_path / "out").exists()


def test_missing_source_file_names_it(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "src")
    (src / "bundle_item.csv").unlink()
    with pytest.raises(DataError, match=r"bundle_item\.csv: file not found"):
        read_bundlerec(src)


def test_bundle_item_outside_its_session_is_refused(tmp_path: Path) -> None:
    src = _tiny(tmp_path / "src")
    with open(src / "bundle_item.csv", "a", encoding="utf-8") as fh:
        fh.write("200,99\n")
    expected = r"bundle_item\.csv: bundle 200 contains item '99', which is not in its session 2"
    with pytest.raises(DataError, match=expected):
        convert_bundlerec(read_bundlerec(src), ConvertConfig(), src)


def test_ratios_that_leave_no_training_split_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KD_STORE", str(tmp_path / "store"))
    ratios = ["--test-ratio", "0.7", "--valid-ratio", "0.3"]
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "bundlerec", str(tmp_path), str(tmp_path / "out"), *ratios])
    assert exit_.value.code == 2 and "must be below 1" in capsys.readouterr().err
