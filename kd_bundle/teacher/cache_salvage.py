"""Salvage of a damaged SQLite file: tell damage from a lock, move the file aside, read back every row still readable.

Paid teacher answers are the one thing a rerun cannot get back for free, so a truncated or bit-flipped cache is
never deleted: it is moved beside itself as `<name>.damaged-<UTC time>` and its readable rows are returned for a
fresh database. Two readers are combined: Python's sqlite3 reading the table by rowid ranges (always; a range that
raises is halved until the unreadable rows are isolated), and the sqlite3 shell's `.recover` where it is installed
and works (it reads pages outside the table's tree too; Debian's 3.40 shell lacks the `sqlite_dbpage` table it
needs and fails, which is then simply skipped).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("kd_bundle.teacher")

SIDE_FILES = ("-wal", "-shm")  # SQLite's WAL and its index live beside the database under these suffixes
_DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}  # "malformed", "file is not a database"
_LOCK_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_RANGE = 512  # rowids per query; a damaged range costs ~2x its size in queries while it is halved
_MIN_ROW_BYTES = 64  # no answers row is smaller (its key alone is 64 hex characters): bounds the rowids to scan
_RECOVER_TIMEOUT_S = 600


def _base_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF  # extended codes carry the primary code in the low byte


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is bad (not busy, not missing, not read-only)."""
    return _base_code(exc) in _DAMAGE_CODES


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether another connection holds a lock this one waited for in vain: never a reason to touch the file."""
    return _base_code(exc) in _LOCK_CODES


def move_aside(path: Path) -> Path:
    """Move `path` and its -wal / -shm files to `<name>.damaged-<UTC time>` (same folder, same suffixes)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while target.exists():  # two repairs in one second keep both copies
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("", *SIDE_FILES):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, f"{target}{suffix}")
    return target


def salvage_rows(damaged: Path, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Every row of `table` (values in `columns` order, the first column the key) still readable in `damaged`.

    Works on a scratch copy (with its WAL, which may hold the newest answers) so the damaged copy stays as found:
    opening a WAL database read-write checkpoints it on close."""
    with tempfile.TemporaryDirectory(prefix=".salvage-", dir=damaged.parent) as scratch:
        copy = Path(scratch) / "copy.sqlite"
        shutil.copyfile(damaged, copy)
        if Path(f"{damaged}-wal").exists():
            shutil.copyfile(f"{damaged}-wal", f"{copy}-wal")
        rows = {row[0]: row for row in _rows_by_rowid(copy, table, columns) if row[0] is not None}
        for row in _rows_by_shell_recover(copy, Path(scratch), table, columns):
            if row[0] is not None:
                rows.setdefault(row[0], row)
    return list(rows.values())


def _rows_by_rowid(path: Path, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.DatabaseError:
        return []
    try:
        # writable_schema lets SQLite open a file shorter than its header says (a truncated copy) instead of
        # refusing it whole; nothing is written.
        db.execute("PRAGMA writable_schema=ON")
        select = f"SELECT {', '.join(columns)} FROM {table} WHERE rowid"
        top = _rowid_bound(db, path, table)

        def read(lo: int, hi: int) -> list[tuple[Any, ...]]:
            try:
                if lo == hi:  # a seek, not a range: a range steps on to the next page, which may be the bad one
                    return db.execute(f"{select} = ?", (lo,)).fetchall()
                return db.execute(f"{select} BETWEEN ? AND ?", (lo, hi)).fetchall()
            except sqlite3.DatabaseError:
                if lo == hi:
                    return []
                mid = (lo + hi) // 2
                return read(lo, mid) + read(mid + 1, hi)

        return [row for lo in range(1, top + 1, _RANGE) for row in read(lo, min(top, lo + _RANGE - 1))]
    except sqlite3.DatabaseError:  # the schema itself is unreadable: only `.recover` can find rows
        return []
    finally:
        db.close()


def _rowid_bound(db: sqlite3.Connection, path: Path, table: str) -> int:
    """The highest rowid to try: max(rowid) when the tree's right edge still reads, else as many rows as the bytes
    could hold (a walk through a tree whose root is gone fails every query: ~1.5 s per 5 MB)."""
    try:
        return db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        wal = Path(f"{path}-wal")
        return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) // _MIN_ROW_BYTES


def _rows_by_shell_recover(path: Path, scratch: Path, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Rows the sqlite3 shell's `.recover` finds: in `table`, and in its lost_and_found table when a row has
    exactly `len(columns)` fields (a page cut off from the table's tree). Empty when the shell is absent or fails."""
    shell = shutil.which("sqlite3")
    if shell is None:
        return []
    recovered = scratch / "recovered.sqlite"
    try:
        script = subprocess.run([shell, str(path), ".recover"], capture_output=True, timeout=_RECOVER_TIMEOUT_S)
        if script.returncode != 0:
            log.debug("sqlite3 .recover failed on %s: %s", path, script.stderr.decode(errors="replace").strip())
            return []
        # A statement of the script that fails (a garbled value) is skipped by the shell: the rest still loads.
        subprocess.run([shell, str(recovered)], input=script.stdout, capture_output=True, timeout=_RECOVER_TIMEOUT_S)
        if not recovered.exists():
            return []
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("sqlite3 .recover could not run on %s: %s", path, exc)
        return []
    db = sqlite3.connect(recovered)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall() if table in tables else []
        if "lost_and_found" in tables:
            fields = ", ".join(f"c{i}" for i in range(len(columns)))
            rows += db.execute(f"SELECT {fields} FROM lost_and_found WHERE nfield = ?", (len(columns),)).fetchall()
        return rows
    except sqlite3.DatabaseError as exc:
        log.debug("reading the rows .recover found in %s failed: %s", path, exc)
        return []
    finally:
        db.close()
