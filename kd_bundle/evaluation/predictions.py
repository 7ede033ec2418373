"""Generated bundles, one row per session (PREDICTION_COLUMNS), and their JSON Lines exchange format.

A predictions file has one JSON object per line:

    {"session_id": 503, "bundles": [["B00BF3QTFQ", "B0030VBPN2"], ...], "intents": ["baby food", ...], "raw": "..."}

`bundles` is required and holds item ids (not "productK"; map those with `bundles_from_positions`);
null means the model output failed to parse. `intents` and `raw` (the model's text, kept for failures)
are optional. A session without a line counts as failed when scored.

The cost columns are optional too (null where unknown: baselines, teacher rows, files without them); the student
fills them: `prompt_tokens` (Int64, the prompt with its prefill), `new_tokens` (Int64, tokens the model generated for
the row) and `seconds` (Float64, the row's equal share of its generation batch's wall time, model load excluded).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import polars as pl

PREDICTION_COLUMNS: dict[str, pl.DataType] = {
    "session_id": pl.Int64,
    "bundles": pl.List(pl.List(pl.String)),  # null = output failed to parse
    "intents": pl.List(pl.String),
    "raw": pl.String,
    "prompt_tokens": pl.Int64,  # optional cost columns, see the module docstring
    "new_tokens": pl.Int64,
    "seconds": pl.Float64,
}
_COST_KEYS = ("prompt_tokens", "new_tokens", "seconds")
_REQUIRED_KEYS = ("session_id", "bundles")
_EXAMPLE_LINE = (
    '{"session_id": 1, "bundles": [["itemA", "itemB"]] or null, "intents": [...] (optional), "raw": "..." (optional)}'
)
_SHOW = 5  # offenders listed in an error message; the rest are counted


def predictions_frame(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """A predictions frame in PREDICTION_COLUMNS from dict rows; missing optional keys become null."""
    records = [{column: row.get(column) for column in PREDICTION_COLUMNS} for row in rows]
    return pl.DataFrame(records, schema=PREDICTION_COLUMNS)


def read_predictions_jsonl(path: Path | str) -> pl.DataFrame:
    """Read a predictions file; a malformed line raises ValueError naming file, line and what was expected."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: predictions file not found")
    rows: list[dict[str, Any]] = []
    first_line: dict[int, int] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline, say) carry nothing
            row = _parse_line(line, f"{path}:{number}")
            session_id = row["session_id"]
            if session_id in first_line:
                raise ValueError(
                    f"{path}:{number}: session_id {session_id} already appeared on line {first_line[session_id]}; "
                    "expected one line per session"
                )
            first_line[session_id] = number
            rows.append(row)
    return predictions_frame(rows)


def write_predictions_jsonl(frame: pl.DataFrame, path: Path | str) -> None:
    """Write `frame` (PREDICTION_COLUMNS; intents and raw optional) as JSON Lines, atomically."""
    _require_prediction_columns(frame, "write_predictions_jsonl")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in _normalised(frame).iter_rows(named=True):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp_name, path)  # a reader never sees half a file
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def check_predictions(predictions: pl.DataFrame, sessions: pl.DataFrame) -> None:
    """Raise ValueError naming duplicate or unknown session ids, and predicted items not in their session."""
    _require_prediction_columns(predictions, "check_predictions")
    ids = predictions.select(pl.col("session_id").cast(pl.Int64))
    if ids["session_id"].null_count():
        raise ValueError("predictions: session_id is null in some row(s); every row needs a session id")
    duplicated = ids.filter(pl.col("session_id").is_duplicated())["session_id"].unique().sort().to_list()
    if duplicated:
        raise ValueError(f"predictions: duplicate session id(s) {_listing(duplicated)}; expected one row per session")
    unknown = ids.join(sessions.select("session_id"), on="session_id", how="anti")["session_id"].sort().to_list()
    if unknown:
        raise ValueError(
            f"predictions: unknown session id(s) {_listing(unknown)}, not among the {sessions.height} sessions "
            "scored against (wrong domain or split?)"
        )
    foreign = _foreign_items(predictions, sessions)
    if foreign.height:
        pairs = [f"session {sid}: {item!r}" for sid, item in foreign.iter_rows()]
        raise ValueError(f"predictions: item(s) not in their session: {_listing(pairs)}")


def bundles_from_positions(
    positions: list[list[int]],
    item_ids: list[str],
    *,
    on_out_of_range: Literal["raise", "drop"] = "raise",
) -> list[list[str]]:
    """Map 1-based product numbers ("product3" -> 3) to the session's item ids, bundle by bundle.

    A position outside 1..len(item_ids) is a hallucinated product: by default a ValueError naming it,
    so the caller can mark the session failed (AICL drops such sessions); "drop" silently skips it.
    A repeated position within a bundle is kept once (generated items are a set); bundles are not
    filtered by size, so the output stays faithful to the model and scoring applies its own rule.
    """
    out: list[list[str]] = []
    for index, bundle in enumerate(positions):
        mapped: list[str] = []
        for position in bundle:
            if isinstance(position, bool) or not isinstance(position, int):
                raise ValueError(f"bundle {index}: position {position!r} is not an integer product number")
            if not 1 <= position <= len(item_ids):
                if on_out_of_range == "drop":
                    continue
                raise ValueError(
                    f"bundle {index}: product{position} is out of range; the session has {len(item_ids)} items "
                    f"(product1..product{len(item_ids)})"
                )
            item = item_ids[position - 1]
            if item not in mapped:
                mapped.append(item)
        out.append(mapped)
    return out


def _parse_line(line: str, where: str) -> dict[str, Any]:
    """One JSON Lines record, checked field by field."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); expected {_EXAMPLE_LINE}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: got a JSON {type(record).__name__}; expected an object {_EXAMPLE_LINE}")
    missing = [key for key in _REQUIRED_KEYS if key not in record]
    unknown = sorted(set(record) - set(PREDICTION_COLUMNS))
    if missing or unknown:
        raise ValueError(
            f"{where}: missing key(s) {missing}, unknown key(s) {unknown}; expected keys {list(PREDICTION_COLUMNS)} "
            "(bundles may be null; intents, raw and the cost columns are optional)"
        )
    session_id = record["session_id"]
    if isinstance(session_id, bool) or not isinstance(session_id, int):
        raise ValueError(f"{where}: session_id is {session_id!r}; expected an integer")
    return {
        "session_id": session_id,
        "bundles": _checked_bundles(record["bundles"], where),
        "intents": _checked_strings(record.get("intents"), where, "intents"),
        "raw": _checked_raw(record.get("raw"), where),
        **{key: _checked_cost(record.get(key), where, key) for key in _COST_KEYS},
    }


def _checked_bundles(value: Any, where: str) -> list[list[str]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{where}: bundles is a {type(value).__name__}; expected a list of lists of item ids, or null")
    for index, bundle in enumerate(value):
        _checked_strings(bundle, where, f"bundles[{index}]", nullable=False)
    return value


def _checked_strings(value: Any, where: str, field: str, nullable: bool = True) -> list[str] | None:
    if value is None and nullable:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {field} is {value!r}; expected a list of strings")
    return value


def _checked_raw(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: raw is a {type(value).__name__}; expected a string or null")
    return value


def _checked_cost(value: Any, where: str, key: str) -> int | float | None:
    integer = key != "seconds"
    numeric = isinstance(value, int) if integer else isinstance(value, (int, float))
    if value is not None and (isinstance(value, bool) or not numeric or value < 0):
        raise ValueError(f"{where}: {key} is {value!r}; expected a non-negative {'integer' if integer else 'number'} or null")
    return value


def _require_prediction_columns(frame: pl.DataFrame, where: str) -> None:
    missing = [column for column in _REQUIRED_KEYS if column not in frame.columns]
    if missing:
        raise ValueError(f"{where}: predictions frame lacks column(s) {missing}; found {frame.columns}")
    if not frame.schema["session_id"].is_integer():
        raise ValueError(f"{where}: predictions column 'session_id' is {frame.schema['session_id']}; expected Int64")
    if frame.schema["bundles"] not in (PREDICTION_COLUMNS["bundles"], pl.Null):
        expected = PREDICTION_COLUMNS["bundles"]
        raise ValueError(f"{where}: predictions column 'bundles' is {frame.schema['bundles']}; expected {expected}")


def _normalised(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` in PREDICTION_COLUMNS order and types, optional columns added as null."""
    return frame.select(
        (pl.col(c) if c in frame.columns else pl.lit(None)).cast(dtype).alias(c)
        for c, dtype in PREDICTION_COLUMNS.items()
    )


def _foreign_items(predictions: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """(session_id, item) pairs predicted for a session that does not contain the item, in session order."""
    predicted = (
        _normalised(predictions)
        .select("session_id", pl.col("bundles").alias("item"))
        .explode("item")
        .explode("item")
        .drop_nulls("item")
    )
    known = sessions.select("session_id", pl.col("item_ids").alias("item")).explode("item")
    return predicted.join(known, on=["session_id", "item"], how="anti").unique(maintain_order=True)


def _listing(values: list[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW])
    return shown + (f" ... and {len(values) - _SHOW} more" if len(values) > _SHOW else "")
