"""Predictions frame, its JSON Lines format, the session checks, and productK -> item id mapping."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.evaluation.predictions import (
    PREDICTION_COLUMNS,
    bundles_from_positions,
    check_predictions,
    predictions_frame,
    read_predictions_jsonl,
    write_predictions_jsonl,
)


def _sessions() -> pl.DataFrame:
    return pl.DataFrame(
        {"session_id": [1, 2], "item_ids": [["a", "b", "c"], ["d", "e"]], "bundles": [[["a", "b"]], [["d", "e"]]]},
        schema={"session_id": pl.Int64, "item_ids": pl.List(pl.String), "bundles": pl.List(pl.List(pl.String))},
    )


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_failures_and_optional_fields(tmp_path: Path) -> None:
    frame = predictions_frame(
        [
            {"session_id": 1, "bundles": [["a", "b"], ["c"]], "intents": ["snacks", "x"], "raw": "{'bundle1': ...}"},
            {"session_id": 2, "bundles": None, "raw": "I cannot answer ü"},
        ]
    )
    path = tmp_path / "out" / "predictions.jsonl"
    write_predictions_jsonl(frame, path)
    back = read_predictions_jsonl(path)
    assert back.schema == pl.Schema(PREDICTION_COLUMNS)
    assert back.equals(frame)
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[1])["bundles"] is None


def test_write_accepts_frame_without_optional_columns(tmp_path: Path) -> None:
    frame = pl.DataFrame({"session_id": [1]}).with_columns(bundles=pl.lit([["a", "b"]]))
    write_predictions_jsonl(frame, tmp_path / "p.jsonl")
    assert read_predictions_jsonl(tmp_path / "p.jsonl")["intents"].to_list() == [None]


def test_blank_lines_are_skipped_and_empty_file_is_empty_frame(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "p.jsonl", ['{"session_id": 1, "bundles": null}', "", "  "])
    assert read_predictions_jsonl(path).height == 1
    (tmp_path / "empty.jsonl").write_text("")
    assert read_predictions_jsonl(tmp_path / "empty.jsonl").schema == pl.Schema(PREDICTION_COLUMNS)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"session_id": 2, "bundles": [["a", "b"]]', "not valid JSON"),
        ('[2, [["a", "b"]]]', "got a JSON list; expected an object"),
        ('{"session_id": 2}', "missing key(s) ['bundles']"),
        ('{"session_id": 2, "bundles": null, "bundle": []}', "unknown key(s) ['bundle']"),
        ('{"session_id": "2", "bundles": null}', "session_id is '2'; expected an integer"),
        ('{"session_id": 2, "bundles": "a,b"}', "bundles is a str"),
        ('{"session_id": 2, "bundles": [["a", 3]]}', "bundles[0] is ['a', 3]; expected a list of strings"),
        ('{"session_id": 2, "bundles": null, "intents": "x"}', "intents is 'x'"),
        ('{"session_id": 2, "bundles": null, "raw": 5}', "raw is a int"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write_lines(tmp_path / "p.jsonl", ['{"session_id": 1, "bundles": null}', line])
    with pytest.raises(ValueError) as error:
        read_predictions_jsonl(path)
    assert f"{path}:2:" in str(error.value)
    assert message in str(error.value)


def test_duplicate_session_in_file_names_both_lines(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "p.jsonl", ['{"session_id": 1, "bundles": null}'] * 2)
    with pytest.raises(ValueError, match=r"p.jsonl:2: session_id 1 already appeared on line 1"):
        read_predictions_jsonl(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope.jsonl: predictions file not found"):
        read_predictions_jsonl(tmp_path / "nope.jsonl")


def test_check_accepts_valid_subset_and_nulls() -> None:
    check_predictions(predictions_frame([{"session_id": 2, "bundles": [["e", "d"]]}, {"session_id": 1}]), _sessions())


def test_check_names_unknown_session_ids() -> None:
    rows = [{"session_id": sid, "bundles": None} for sid in (1, 9, 7, 8, 10, 11, 12, 13)]
    with pytest.raises(ValueError) as error:
        check_predictions(predictions_frame(rows), _sessions())
    assert "unknown session id(s) 7, 8, 9, 10, 11 ... and 2 more" in str(error.value)


def test_check_names_foreign_items_with_their_session() -> None:
    # "d" exists, but in session 2, not in session 1.
    frame = predictions_frame([{"session_id": 1, "bundles": [["a", "d"], ["zz", "b"]]}])
    with pytest.raises(ValueError, match=r"item\(s\) not in their session: session 1: 'd', session 1: 'zz'"):
        check_predictions(frame, _sessions())


def test_check_rejects_duplicate_session_ids_in_frame() -> None:
    frame = predictions_frame([{"session_id": 1, "bundles": None}, {"session_id": 1, "bundles": [["a", "b"]]}])
    with pytest.raises(ValueError, match=r"duplicate session id\(s\) 1"):
        check_predictions(frame, _sessions())


def test_check_rejects_wrong_columns() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['bundles'\]"):
        check_predictions(pl.DataFrame({"session_id": [1]}), _sessions())
    with pytest.raises(ValueError, match=r"'bundles' is String"):
        check_predictions(pl.DataFrame({"session_id": [1], "bundles": ["a,b"]}), _sessions())


def test_bundles_from_positions_maps_one_based_and_dedups() -> None:
    items = ["a", "b", "c", "d"]
    assert bundles_from_positions([[1, 3], [2, 2, 4], [4]], items) == [["a", "c"], ["b", "d"], ["d"]]


def test_bundles_from_positions_out_of_range_raises_or_drops() -> None:
    items = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"bundle 1: product5 is out of range; the session has 4 items"):
        bundles_from_positions([[1, 2], [3, 5]], items)
    with pytest.raises(ValueError, match=r"product0 is out of range"):
        bundles_from_positions([[0, 1]], items)
    assert bundles_from_positions([[1, 2], [3, 5], [0]], items, on_out_of_range="drop") == [["a", "b"], ["c"], []]
    with pytest.raises(ValueError, match=r"position '3' is not an integer"):
        bundles_from_positions([["3"]], items)  # type: ignore[list-item]
