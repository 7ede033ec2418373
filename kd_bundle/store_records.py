"""Which artifacts something still names: Prefect's result records, published results tables, other artifacts.

Read without Prefect: a record is a JSON file in Prefect's local result storage. Every reader errs on the side of
keeping: a 64-hex string found where a structured reference could not be parsed counts as a reference, since a false
hit only keeps an artifact and a miss would delete one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

HASH = re.compile(r"[0-9a-f]{64}")
_HASH_IN_TEXT = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


class GcRefused(ValueError):
    """gc would have to guess what is live (no records found): it removes nothing and says why."""


def default_records_dir(environ: dict[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Where Prefect keeps result records, found as Prefect 3 finds it (without importing Prefect): the
    PREFECT_RESULTS_LOCAL_STORAGE_PATH / PREFECT_LOCAL_STORAGE_PATH variables, then `results.local_storage_path` in
    ./prefect.toml or ./pyproject.toml [tool.prefect] (this repo sets .kd-cache/prefect-results), then
    $PREFECT_HOME/storage (PREFECT_HOME defaults to ~/.prefect). A Prefect profile's setting is not read: pass
    --records then."""
    environ = dict(os.environ if environ is None else environ)
    cwd = Path.cwd() if cwd is None else cwd
    for name in ("PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH"):
        if environ.get(name):
            return Path(environ[name]).expanduser()
    for file, table in (("prefect.toml", ()), ("pyproject.toml", ("tool", "prefect"))):
        try:
            config = tomllib.loads((cwd / file).read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        for key in (*table, "results"):
            config = config.get(key, {}) if isinstance(config, dict) else {}
        if isinstance(config, dict) and config.get("local_storage_path"):
            return (cwd / Path(config["local_storage_path"]).expanduser()).resolve()
    return Path(environ.get("PREFECT_HOME") or "~/.prefect").expanduser() / "storage"


def record_hashes(path: Path) -> tuple[set[str], bool]:
    """The artifact hashes one Prefect result record names, and whether it was a readable JSON-serialized record.

    A record is `{"metadata": {"serializer": {"type": ...}}, "result": "<serialized value>"}`; the JSON serializer
    writes an ArtifactRef as `{"__class__": "kd_bundle.store.ArtifactRef", "data": {"kind", "sha256", "rows"}}`
    and a model holding refs with plain `{"kind", "sha256", "rows"}` inside. Every 64-hex string of the file counts
    as well (a hash returned as a plain string), and it is all there is for anything else (a pickled result, a stray
    file): a false hit keeps an artifact, it never removes one.
    """
    raw = path.read_bytes()
    in_text = _hashes_in_bytes(raw)
    try:
        record = json.loads(raw)
        serializer = record["metadata"]["serializer"]["type"]
        payload = record["result"]
        if serializer == "json":
            return set(_refs_in(json.loads(payload))) | in_text, True
        return _hashes_in_bytes(base64.b64decode(payload, validate=False)) | in_text, False
    except (ValueError, KeyError, TypeError):
        return in_text, False


def _refs_in(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        sha = value.get("sha256")
        if isinstance(value.get("kind"), str) and isinstance(sha, str) and HASH.fullmatch(sha):
            yield sha
        for inner in value.values():
            yield from _refs_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs_in(inner)


def _hashes_in_bytes(data: bytes) -> set[str]:
    return {m.decode() for m in _HASH_IN_TEXT.findall(data)}


def hashes_in_tables(paths: list[Path]) -> set[str]:
    """Values of every String `*_sha256` column of these Parquet files (a results table's `predictions_sha256`)."""
    found: set[str] = set()
    for path in paths:
        try:
            columns = [f.name for f in pq.read_schema(path) if f.name.endswith("_sha256")]
            if columns:
                frame = pl.read_parquet(path, columns=columns)
                found |= {v for c in columns if frame[c].dtype == pl.String for v in frame[c].drop_nulls().to_list()}
        except (OSError, pl.exceptions.PolarsError, ValueError):
            continue  # a damaged file names nothing it could still serve; verify reports damaged artifacts
    return {h for h in found if HASH.fullmatch(h)}


def live_hashes(records_dirs: list[Path], results_dir: Path | None, stored: set[str], tables: dict[str, Path]
                ) -> tuple[set[str], int, int]:
    """(live hashes, records read, opaque records), given the hashes of the store's artifacts and its Parquet files
    by hash (`tables`).

    Raises GcRefused when a folder is missing, holds no record, or its records name none of the store's artifacts
    (another project's records, a default ~/.prefect/storage): everything would look unreferenced."""
    live: set[str] = set()
    records = opaque = 0
    for folder in records_dirs:
        if not folder.is_dir():
            raise GcRefused(f"no records folder {folder}: every artifact would look unreferenced, so nothing was "
                            "removed (pass the folder Prefect writes results to with --records)")
        files = [p for p in folder.rglob("*") if p.is_file()]
        if not files:
            raise GcRefused(f"records folder {folder} holds no result record: every artifact would look unreferenced, "
                            "so nothing was removed (is it the folder Prefect writes results to?)")
        for file in files:
            try:
                hashes, readable = record_hashes(file)
            except OSError as exc:
                raise GcRefused(f"cannot read record {file} ({exc.strerror or exc}): what it names is unknown, so "
                                "nothing was removed") from None
            live |= hashes
            records += 1
            opaque += not readable
    if records == opaque:
        raise GcRefused(f"none of the {records} files in {', '.join(map(str, records_dirs))} is a Prefect JSON result "
                        "record: nothing was removed (is it the folder Prefect writes results to?)")
    if stored and not live & stored:
        raise GcRefused(f"none of the {records} records in {', '.join(map(str, records_dirs))} names an artifact of "
                        f"this store ({len(stored)} artifacts): nothing was removed (are they this store's records?)")
    if results_dir is not None and results_dir.is_dir():
        live |= hashes_in_tables(sorted(results_dir.rglob("*.parquet")))
    # A live table that names another artifact (a results artifact's predictions) keeps that one alive too.
    frontier = live & set(tables)
    while frontier:
        named = hashes_in_tables([tables[h] for h in sorted(frontier)])
        frontier = (named - live) & set(tables)
        live |= named
    return live, records, opaque
