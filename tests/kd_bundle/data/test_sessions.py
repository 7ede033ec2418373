"""Sessions: the three real domains against the documented counts, the exchange-table path, and every DataError.

Expected counts come from ../shared/data/README.md ("Sizes") and notes/paper.md section 1; per-item facts are
read back from the shared CSV files with the csv module, independently of the polars loader.
"""

from __future__ import annotations

import csv
import html
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.config import DataConfig, settings
from kd_bundle.data.sessions import (
    SESSION_COLUMNS,
    DataError,
    build_sessions,
    leaf_category,
    load_sessions,
    read_aicl_domain,
    read_exchange_tables,
    slice_sessions,
    split_of,
)

DATA_ROOT = settings().data_root
# domain: (sessions, train, test, valid, de-duplicated bundles) from shared/data/README.md "Sizes".
DOCUMENTED = {
    "electronic": (893, 623, 180, 90, 1346),
    "clothing": (968, 698, 180, 90, 1495),
    "food": (914, 644, 180, 90, 1353),
}


@pytest.fixture(scope="module")
def real() -> dict[str, pl.DataFrame]:
    """Each real domain loaded once for the whole module."""
    return {domain: load_sessions(DataConfig(domain=domain), DATA_ROOT) for domain in DOCUMENTED}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- real domains


@pytest.mark.parametrize("domain", list(DOCUMENTED))
def test_real_domain_matches_documented_counts(real: dict[str, pl.DataFrame], domain: str) -> None:
    sessions = real[domain]
    n_sessions, n_train, n_test, n_valid, n_bundles = DOCUMENTED[domain]
    assert sessions.columns == SESSION_COLUMNS
    assert sessions.height == n_sessions
    assert sessions["session_id"].is_unique().all()
    assert (split_of(sessions, "train").height, split_of(sessions, "test").height, split_of(sessions, "valid").height) == (
        n_train,
        n_test,
        n_valid,
    )
    assert sessions["bundles"].list.len().sum() == n_bundles
    # Only sessions with >= 1 bundle are kept; sessions have 2..10 items, no duplicates.
    assert sessions["bundles"].list.len().min() >= 1
    lengths = sessions["item_ids"].list.len()
    assert (lengths.min(), lengths.max()) == (2, 10)
    assert (sessions["item_ids"].list.n_unique() == lengths).all()
    # Parallel per-item lists have the same length.
    assert (sessions["titles"].list.len() == lengths).all()
    assert (sessions["categories"].list.len() == lengths).all()
    assert (sessions["intents"].list.len() == sessions["bundles"].list.len()).all()


@pytest.mark.parametrize("domain", list(DOCUMENTED))
def test_test_split_has_twenty_sessions_per_length(real: dict[str, pl.DataFrame], domain: str) -> None:
    test = split_of(real[domain], "test")
    per_length = test.group_by(pl.col("item_ids").list.len().alias("length")).len().sort("length")
    assert per_length.rows() == [(length, 20) for length in range(2, 11)]
    valid = split_of(real[domain], "valid")  # the 90 unassigned sessions, 10 per length
    per_length = valid.group_by(pl.col("item_ids").list.len().alias("length")).len().sort("length")
    assert per_length.rows() == [(length, 10) for length in range(2, 11)]


@pytest.mark.parametrize("domain", list(DOCUMENTED))
def test_items_keep_session_order_and_bundles_match_dedup_file(real: dict[str, pl.DataFrame], domain: str) -> None:
    positions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in _csv_rows(DATA_ROOT / domain / "aicl" / "session_items.csv"):
        positions[int(row["session_id"])].append((int(row["position"]), row["item_asin"]))
    expected_items = {sid: [asin for _, asin in sorted(pairs)] for sid, pairs in positions.items()}
    loaded = dict(zip(real[domain]["session_id"].to_list(), real[domain]["item_ids"].to_list()))
    assert loaded == expected_items

    bundles: dict[int, list[tuple[int, list[str]]]] = defaultdict(list)
    for row in _csv_rows(DATA_ROOT / domain / "aicl" / "session_bundles_dedup.csv"):
        bundles[int(row["session_id"])].append((int(row["bundle_index"]), row["item_asins"].split(",")))
    expected_bundles = {sid: [items for _, items in sorted(pairs)] for sid, pairs in bundles.items()}
    loaded_bundles = dict(zip(real[domain]["session_id"].to_list(), real[domain]["bundles"].to_list()))
    assert loaded_bundles == expected_bundles


def test_titles_are_html_unescaped(real: dict[str, pl.DataFrame]) -> None:
    for domain, sessions in real.items():
        titles = sessions["titles"].explode()
        assert titles.null_count() == 0, domain
        assert not titles.str.contains(r"&(amp|quot|lt|gt|#\d+);").any(), domain
    food = real["food"].explode("item_ids", "titles").select("session_id", "split", "item_ids", "titles")
    # Session 611 is unassigned (valid): no prompt title, so the raw title "S&amp;B - Wasabi in Plastic Tube 1.52 Oz."
    # from aicl/item_titles.csv is used, unescaped.
    raw = {r["item_asin"]: r["title"] for r in _csv_rows(DATA_ROOT / "food" / "aicl" / "item_titles.csv")}
    assert raw["B0002PSOMO"] == "S&amp;B - Wasabi in Plastic Tube 1.52 Oz."
    wasabi = food.filter(pl.col("item_ids") == "B0002PSOMO")
    assert wasabi.rows() == [(611, "valid", "B0002PSOMO", "S&B - Wasabi in Plastic Tube 1.52 Oz.")]
    # Session 119 (train) uses its prompt title, whose Korean part is written as &#49569;&#54617;... in split.csv.
    prompt = next(r for r in _csv_rows(DATA_ROOT / "food" / "aicl" / "split.csv") if r["session_id"] == "119")
    fourth = prompt["prompt_titles"].split("|")[3]
    assert "&#49569;" in fourth
    loaded = food.filter(pl.col("session_id") == 119)["titles"].to_list()[3]
    assert loaded == html.unescape(fourth).strip()
    assert "송학" in loaded


def test_categories_are_leaf_of_longest_path(real: dict[str, pl.DataFrame]) -> None:
    clothing = real["clothing"].explode("item_ids", "categories")
    category = dict(zip(clothing["item_ids"].to_list(), clothing["categories"].to_list()))
    # item 156291 = B00I2K5UW8: [[Clothing, Shoes & Jewelry,Women,Clothing,Lingerie, Sleep & Lounge,Intimates,
    # Lingerie,Bustiers & Corsets]] -> last level "Bustiers & Corsets".
    assert category["B00I2K5UW8"] == "Bustiers & Corsets"
    # item 168313 = B004UUKSM6: two paths of equal length -> the first one's last level.
    assert category["B004UUKSM6"] == "Costumes & Accessories"
    # Level names with ", " survive as one level.
    assert "Lingerie, Sleep & Lounge" in set(category.values())


def test_food_items_with_empty_category_path_have_null_category(real: dict[str, pl.DataFrame]) -> None:
    folder = DATA_ROOT / "food"
    empty_ids = {r["item ID"] for r in _csv_rows(folder / "item_categories.csv") if r["categories"] == "[[]]"}
    assert len(empty_ids) == 207  # documented in shared/data/README.md
    asins = {r["source ID"] for r in _csv_rows(folder / "item_idx_mapping.csv") if r["item ID"] in empty_ids}
    food = real["food"].explode("item_ids", "categories")
    empty = food.filter(pl.col("item_ids").is_in(sorted(asins)))
    assert empty.height > 0
    assert empty["categories"].null_count() == empty.height
    # Those items are bundle items (item_categories covers bundle items only), so some bundled items have no category.
    bundled = set(real["food"]["bundles"].explode().explode().to_list())
    assert set(empty["item_ids"].to_list()) & bundled


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ("[[A,B,C],[A,D]]", "C"),
        ("[[A,D],[A,B,C]]", "C"),  # longest path wins even when it is not first
        ("[[A,B],[C,D]]", "B"),  # tie: the first longest path
        ("[[Clothing, Shoes & Jewelry]]", "Clothing, Shoes & Jewelry"),
        ("[[Clothing, Shoes & Jewelry,Women,Clothing,Lingerie, Sleep & Lounge]]", "Lingerie, Sleep & Lounge"),
        (
            "[[Clothing, Shoes & Jewelry,Novelty, Costumes & More],[Clothing, Shoes & Jewelry,Men,Shoes,Boots]]",
            "Boots",  # 3 levels (", " does not split) vs 4 levels
        ),
        ("[[]]", None),
        ("", None),
        (None, None),
    ],
)
def test_leaf_category(paths: str | None, expected: str | None) -> None:
    assert leaf_category(paths) == expected


def test_slice_sessions_stratifies_test_and_bounds_train(real: dict[str, pl.DataFrame]) -> None:
    sessions = real["electronic"]
    sliced = slice_sessions(sessions, DataConfig(domain="electronic", max_train_sessions=50, max_test_sessions=18))
    test = split_of(sliced, "test")
    per_length = test.group_by(pl.col("item_ids").list.len().alias("length")).len().sort("length")
    assert per_length.rows() == [(length, 2) for length in range(2, 11)]
    assert set(test["session_id"]) <= set(split_of(sessions, "test")["session_id"])
    train = split_of(sliced, "train")
    assert train["session_id"].to_list() == split_of(sessions, "train")["session_id"].head(50).to_list()
    assert split_of(sliced, "valid").equals(split_of(sessions, "valid"))
    assert sliced["session_id"].is_sorted()
    # The same seed picks the same sessions; the loader applies the same slice.
    again = slice_sessions(sessions, DataConfig(domain="electronic", max_train_sessions=50, max_test_sessions=18))
    assert again.equals(sliced)
    # No bounds: nothing is dropped.
    assert slice_sessions(sessions, DataConfig(domain="electronic")).equals(sessions)


def test_split_of_rejects_unknown_split(real: dict[str, pl.DataFrame]) -> None:
    with pytest.raises(DataError, match=r"unknown split 'training'.*train"):
        split_of(real["food"], "training")


# ---------------------------------------------------------------- exchange tables

ITEM_HEADER = ["session_id", "split", "position", "item_id", "title", "category"]
BUNDLE_HEADER = ["session_id", "bundle_index", "intent", "item_ids"]
ITEMS = [
    # positions deliberately out of file order in session 1
    [1, "train", 2, "b", "Bread", "Bakery"],
    [1, "train", 1, "a", "Apple", "Fruit"],
    [1, "train", 3, "c", "Cheese", ""],
    [2, "test", 1, "d", "Dates", "Fruit"],
    [2, "test", 2, "e", "Eggs", "Dairy"],
    [3, "valid", 1, "f", "Flour", "Bakery"],
    [3, "valid", 2, "g", "Ghee", "Dairy"],
]
BUNDLES = [
    [1, 2, "cheese board", "b,c"],
    [1, 1, "breakfast", "a,b"],
    [2, 1, "baking", "d,e"],
]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _exchange(tmp_path: Path, items: list[list] = ITEMS, bundles: list[list] = BUNDLES) -> Path:
    _write_csv(tmp_path / "items.csv", ITEM_HEADER, items)
    _write_csv(tmp_path / "bundles.csv", BUNDLE_HEADER, bundles)
    return tmp_path


def _build(folder: Path) -> pl.DataFrame:
    items, bundles = read_exchange_tables(folder)
    return build_sessions(items, bundles, source=str(folder))


EXPECTED_ROWS = [
    (1, "train", ["a", "b", "c"], ["Apple", "Bread", "Cheese"], ["Fruit", "Bakery", None],
     [["a", "b"], ["b", "c"]], ["breakfast", "cheese board"]),
    (2, "test", ["d", "e"], ["Dates", "Eggs"], ["Fruit", "Dairy"], [["d", "e"]], ["baking"]),
    (3, "valid", ["f", "g"], ["Flour", "Ghee"], ["Bakery", "Dairy"], [], []),
]  # fmt: skip


def test_exchange_csv_builds_sessions(tmp_path: Path) -> None:
    sessions = _build(_exchange(tmp_path))
    assert sessions.columns == SESSION_COLUMNS
    # Items sorted by position, bundles by bundle_index, empty CSV category -> null, no-bundle session -> [].
    assert sessions.rows() == EXPECTED_ROWS


def test_exchange_parquet_builds_same_sessions(tmp_path: Path) -> None:
    pl.DataFrame(
        [dict(zip(ITEM_HEADER, row)) | {"category": row[5] or None} for row in ITEMS],
        schema={"session_id": pl.Int32, "split": pl.String, "position": pl.Int32, "item_id": pl.String,
                "title": pl.String, "category": pl.String},
    ).write_parquet(tmp_path / "items.parquet")  # fmt: skip
    pl.DataFrame(
        [dict(zip(BUNDLE_HEADER, row[:3] + [row[3].split(",")])) for row in BUNDLES],
        schema={"session_id": pl.Int64, "bundle_index": pl.Int64, "intent": pl.String, "item_ids": pl.List(pl.String)},
    ).write_parquet(tmp_path / "bundles.parquet")
    items, bundles = read_exchange_tables(tmp_path)
    assert items.schema["session_id"] == pl.Int64  # Int32 in the file, cast to the schema
    assert bundles.schema["item_ids"] == pl.List(pl.String)
    assert build_sessions(items, bundles).rows() == EXPECTED_ROWS


def test_missing_exchange_file(tmp_path: Path) -> None:
    _write_csv(tmp_path / "items.csv", ITEM_HEADER, ITEMS)
    with pytest.raises(DataError, match=r"neither bundles\.parquet nor bundles\.csv found") as err:
        read_exchange_tables(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_exchange_column(tmp_path: Path) -> None:
    _write_csv(tmp_path / "items.csv", ITEM_HEADER[:-1], [row[:-1] for row in ITEMS])
    _write_csv(tmp_path / "bundles.csv", BUNDLE_HEADER, BUNDLES)
    with pytest.raises(DataError, match=r"items\.csv: missing column\(s\) \['category'\]") as err:
        read_exchange_tables(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_wrong_type_names_column_row_and_value(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[4][0] = "abc"
    with pytest.raises(DataError, match=r"items\.csv: column 'session_id' must be Int64; row 4 has 'abc'") as err:
        read_exchange_tables(_exchange(tmp_path, items=items))
    assert str(tmp_path) in str(err.value)


def test_wrong_type_in_bundles(tmp_path: Path) -> None:
    bundles = [list(row) for row in BUNDLES]
    bundles[1][1] = "first"
    with pytest.raises(DataError, match=r"bundles\.csv: column 'bundle_index' must be Int64; row 1 has 'first'"):
        read_exchange_tables(_exchange(tmp_path, bundles=bundles))


def test_wrong_type_parquet_item_ids_is_data_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "items.csv", ITEM_HEADER, ITEMS)
    pl.DataFrame({"session_id": [1], "bundle_index": [1], "intent": ["x"], "item_ids": [7]}).write_parquet(
        tmp_path / "bundles.parquet"
    )
    with pytest.raises(DataError, match=r"bundles\.parquet: column 'item_ids' must be List\(String\); found type Int64"):
        read_exchange_tables(tmp_path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    _write_csv(tmp_path / "items.csv", ITEM_HEADER, ITEMS)
    (tmp_path / "bundles.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match=r"bundles\.parquet: not a readable parquet file"):
        read_exchange_tables(tmp_path)


def test_unknown_split(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[5][1] = items[6][1] = "holdout"
    with pytest.raises(DataError, match=r"items: session 3 has split 'holdout'; expected \('train', 'test', 'valid'\)"):
        _build(_exchange(tmp_path, items=items))


def test_empty_split_is_rejected(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[5][1] = items[6][1] = ""  # CSV empty field -> null
    with pytest.raises(DataError, match="session 3"):
        _build(_exchange(tmp_path, items=items))


def test_item_twice_in_one_session(tmp_path: Path) -> None:
    items = ITEMS + [[2, "test", 3, "d", "Dates again", "Fruit"]]
    with pytest.raises(DataError, match=r"items: item 'd' appears twice in session 2"):
        _build(_exchange(tmp_path, items=items))


def test_same_item_in_two_sessions_is_fine(tmp_path: Path) -> None:
    items = ITEMS + [[3, "valid", 3, "a", "Apple", "Fruit"]]
    sessions = _build(_exchange(tmp_path, items=items))
    assert sessions.filter(pl.col("session_id") == 3)["item_ids"].to_list() == [["f", "g", "a"]]


def test_item_without_title(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[4][4] = ""  # an empty CSV field reads as null: it would reach the prompt as the word None
    with pytest.raises(DataError, match=r"items: item 'e' of session 2 has no title \(1 item\(s\) in all\)"):
        _build(_exchange(tmp_path, items=items))


def test_empty_item_id(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[6][3] = ""
    with pytest.raises(DataError, match=r"session 3 has an empty item_id"):
        _build(_exchange(tmp_path, items=items))


def test_bundles_for_a_session_without_items(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"bundles: session 9 has bundles but no items \(empty session\)") as err:
        _build(_exchange(tmp_path, bundles=BUNDLES + [[9, 1, "ghost", "x,y"]]))
    assert str(tmp_path) in str(err.value)


def test_bundle_with_one_item(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"session 2 bundle 2 has 1 distinct item\(s\); a bundle needs at least 2"):
        _build(_exchange(tmp_path, bundles=BUNDLES + [[2, 2, "solo", "d"]]))


def test_bundle_with_one_distinct_item(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"session 2 bundle 2 has 1 distinct item"):
        _build(_exchange(tmp_path, bundles=BUNDLES + [[2, 2, "twice", "d,d"]]))


def test_bundle_with_empty_item_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"session 2 bundle 2 has 0 distinct item"):
        _build(_exchange(tmp_path, bundles=BUNDLES + [[2, 2, "nothing", ""]]))


def test_bundle_item_not_in_its_session(tmp_path: Path) -> None:
    # 'f' exists, but in session 3, not session 2.
    with pytest.raises(DataError, match=r"session 2 bundle 2 contains item 'f', which is not in that session"):
        _build(_exchange(tmp_path, bundles=BUNDLES + [[2, 2, "stray", "d,f"]]))


# ---------------------------------------------------------------- malformed AICL folder

AICL_FILES = [
    "aicl/session_items.csv",
    "aicl/split.csv",
    "aicl/item_titles.csv",
    "aicl/session_bundles_dedup.csv",
    "item_categories.csv",
    "item_idx_mapping.csv",
]


def _aicl_copy(tmp_path: Path, broken: str | None = None, edit=None) -> Path:
    """Food's needed files under tmp_path/food: symlinks, except `broken`, which is rewritten through `edit`."""
    folder = tmp_path / "food"
    (folder / "aicl").mkdir(parents=True)
    for name in AICL_FILES:
        source = DATA_ROOT / "food" / name
        if name == broken:
            if edit is not None:
                (folder / name).write_text(edit(source.read_text(encoding="utf-8")), encoding="utf-8")
        else:
            (folder / name).symlink_to(source)
    return folder


def test_aicl_copy_loads_like_the_real_domain(tmp_path: Path, real: dict[str, pl.DataFrame]) -> None:
    # Control for the malformed cases below: the untouched copy loads to exactly the real Food sessions.
    _aicl_copy(tmp_path)
    assert load_sessions(DataConfig(domain="food"), tmp_path).equals(real["food"])


def test_aicl_missing_file(tmp_path: Path) -> None:
    folder = _aicl_copy(tmp_path, broken="item_idx_mapping.csv")
    with pytest.raises(DataError, match=r"item_idx_mapping\.csv: file not found"):
        read_aicl_domain(folder)


def test_aicl_missing_column(tmp_path: Path) -> None:
    def rename(text: str) -> str:
        return text.replace("session_id,split,prompt_titles", "session_id,fold,prompt_titles", 1)

    folder = _aicl_copy(tmp_path, broken="aicl/split.csv", edit=rename)
    with pytest.raises(DataError, match=r"split\.csv: missing column\(s\) \['split'\]"):
        read_aicl_domain(folder)


def test_aicl_wrong_type(tmp_path: Path) -> None:
    def break_position(text: str) -> str:
        lines = text.split("\n")
        assert lines[3].startswith("1,0,3,")  # data row 2 (0-based) is session 1, position 3
        lines[3] = lines[3].replace("1,0,3,", "1,0,third,", 1)
        return "\n".join(lines)

    folder = _aicl_copy(tmp_path, broken="aicl/session_items.csv", edit=break_position)
    with pytest.raises(DataError, match=r"session_items\.csv: column 'position' must be Int64; row 2 has 'third'"):
        read_aicl_domain(folder)


def test_aicl_unknown_split(tmp_path: Path) -> None:
    def rename_split(text: str) -> str:
        lines = text.split("\n")
        assert lines[1].startswith("1,train,")
        lines[1] = lines[1].replace("1,train,", "1,training,", 1)
        return "\n".join(lines)

    _aicl_copy(tmp_path, broken="aicl/split.csv", edit=rename_split)
    with pytest.raises(DataError, match=r"session 1 has split 'training'") as err:
        load_sessions(DataConfig(domain="food"), tmp_path)
    assert str(tmp_path / "food") in str(err.value)


def test_aicl_bundle_item_not_in_session(tmp_path: Path) -> None:
    def swap_item(text: str) -> str:
        # Session 1 bundle 2 is "B0062ORVWI,B006YH3VEA"; B000NOTREAL is in no session.
        return text.replace('1,2,Furikake,"B0062ORVWI,B006YH3VEA"', '1,2,Furikake,"B0062ORVWI,B000NOTREAL"', 1)

    _aicl_copy(tmp_path, broken="aicl/session_bundles_dedup.csv", edit=swap_item)
    with pytest.raises(DataError, match=r"session 1 bundle 2 contains item 'B000NOTREAL', which is not in that session"):
        load_sessions(DataConfig(domain="food"), tmp_path)


def test_aicl_unreadable_csv(tmp_path: Path) -> None:
    folder = _aicl_copy(tmp_path, broken="aicl/item_titles.csv", edit=lambda text: 'item_asin,title\n"unclosed,x\n')
    with pytest.raises(DataError, match=r"item_titles\.csv: not a readable CSV file"):
        read_aicl_domain(folder)


# ---------------------------------------------------------------- keys a later stage trusts


def test_duplicate_position_names_file_session_and_rows(tmp_path: Path) -> None:
    # Before: 'c' silently took Bread's place at position 2 (a swapped title), now the file says where.
    items = [list(row) for row in ITEMS]
    items[2][2] = 2
    with pytest.raises(DataError, match=r"items\.csv: rows 0 and 2: session 1 has position 2 twice") as err:
        _build(_exchange(tmp_path, items=items))
    assert str(tmp_path) in str(err.value)


def test_missing_position(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[4][2] = ""  # CSV empty field -> null, which sorted first and reordered the session
    with pytest.raises(DataError, match=r"items\.csv: row 4: session 2 has no position \(empty or null\)"):
        _build(_exchange(tmp_path, items=items))


def test_null_position_in_parquet(tmp_path: Path) -> None:
    frame = pl.DataFrame([dict(zip(ITEM_HEADER, row)) for row in ITEMS]).with_columns(
        position=pl.when(pl.col("item_id") == "g").then(None).otherwise(pl.col("position"))
    )
    frame.write_parquet(tmp_path / "items.parquet")
    _write_csv(tmp_path / "bundles.csv", BUNDLE_HEADER, BUNDLES)
    with pytest.raises(DataError, match=r"items\.parquet: row 6: session 3 has no position"):
        read_exchange_tables(tmp_path)


def test_duplicate_bundle_index(tmp_path: Path) -> None:
    bundles = BUNDLES + [[2, 1, "second baking", "d,e"]]  # used to add a bundle the dataset never had
    with pytest.raises(DataError, match=r"bundles\.csv: rows 2 and 3: session 2 has bundle_index 1 twice"):
        _build(_exchange(tmp_path, bundles=bundles))


def test_session_in_two_splits(tmp_path: Path) -> None:
    items = [list(row) for row in ITEMS]
    items[4][1] = "train"  # session 2: row 3 says test, row 4 says train; the first used to win
    with pytest.raises(DataError, match=r"items\.csv: rows 3 and 4: session 2 is listed in two splits "
                                        r"\('test' and 'train'\)"):
        _build(_exchange(tmp_path, items=items))


def test_in_memory_frames_are_checked_too() -> None:
    items = pl.DataFrame([dict(zip(ITEM_HEADER, row)) for row in ITEMS + [[3, "valid", 2, "h", "Honey", "x"]]])
    bundles = pl.DataFrame([dict(zip(BUNDLE_HEADER, row[:3] + [row[3].split(",")])) for row in BUNDLES])
    with pytest.raises(DataError, match=r"<memory> items: rows 6 and 7: session 3 has position 2 twice"):
        build_sessions(items, bundles)


def _edit_line(number: int, old: str, new: str):
    def edit(text: str) -> str:
        lines = text.split("\n")
        assert lines[number].startswith(old), lines[number]
        lines[number] = new + lines[number][len(old):]
        return "\n".join(lines)

    return edit


def test_aicl_duplicate_position(tmp_path: Path) -> None:
    # data rows 1 and 2 are session 1 positions 2 and 3
    folder = _aicl_copy(tmp_path, broken="aicl/session_items.csv", edit=_edit_line(3, "1,0,3,", "1,0,2,"))
    with pytest.raises(DataError, match=r"session_items\.csv: rows 1 and 2: session 1 has position 2 twice"):
        read_aicl_domain(folder)


def test_aicl_missing_position(tmp_path: Path) -> None:
    folder = _aicl_copy(tmp_path, broken="aicl/session_items.csv", edit=_edit_line(3, "1,0,3,", "1,0,,"))
    with pytest.raises(DataError, match=r"session_items\.csv: row 2: session 1 has no position"):
        read_aicl_domain(folder)


def test_aicl_duplicate_bundle_index(tmp_path: Path) -> None:
    folder = _aicl_copy(tmp_path, broken="aicl/session_bundles_dedup.csv", edit=_edit_line(2, "1,2,", "1,1,"))
    with pytest.raises(DataError, match=r"session_bundles_dedup\.csv: rows 0 and 1: session 1 has bundle_index 1 twice"):
        read_aicl_domain(folder)


def test_aicl_session_listed_in_two_splits(tmp_path: Path) -> None:
    def list_twice(text: str) -> str:
        return text.rstrip("\n") + "\n1,test,\n"

    folder = _aicl_copy(tmp_path, broken="aicl/split.csv", edit=list_twice)
    with pytest.raises(DataError, match=r"split\.csv: rows 0 and \d+: session 1 is listed twice "
                                        r"\(splits 'train' and 'test'\)"):
        read_aicl_domain(folder)
