"""The content-addressed artifact store: the only module that knows about Parquet files and the store root.

An artifact lives at `<root>/<kind>/<sha256>.parquet`, where sha256 is the hash of the file's bytes.
Stages pass `ArtifactRef`s (kind, hash, rows), never frames, so Prefect hashes a few bytes per input
and a cache key is a hash of content, never of a path. The root is resolved at read time, so moving the
store does not invalidate any key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from kd_bundle.config import settings

_log = logging.getLogger(__name__)


class ArtifactMissing(FileNotFoundError):
    """A reference whose file is gone (deleted store, another machine's cache record)."""


class ArtifactRef(BaseModel, frozen=True):
    kind: str
    sha256: str
    rows: int

    def path(self, root: Path | None = None) -> Path:
        suffix = "" if self.kind in DIRECTORY_KINDS else ".parquet"
        return store_root(root) / self.kind / f"{self.sha256}{suffix}"

    def exists(self, root: Path | None = None) -> bool:
        return self.path(root).exists()

    def __str__(self) -> str:
        return f"{self.kind}:{self.sha256[:12]}({self.rows} rows)"


# Kinds stored as folders (LoRA adapters) rather than one Parquet file.
DIRECTORY_KINDS = {"adapter"}


def store_root(root: Path | None = None) -> Path:
    return Path(root) if root is not None else settings().store


class StoreWriteError(OSError):
    """The store cannot take a write (a full or read-only disk): nothing half-written is left behind."""


def write_artifact(frame: pl.DataFrame, kind: str, root: Path | None = None) -> ArtifactRef:
    """Write `frame` once under its content hash. Writing the same content twice is a no-op.

    The bytes go to a temporary file renamed into place, so a reader (or a cache record) only ever sees whole files.
    """
    folder = store_root(root) / kind
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        tmp = Path(tmp_name)
        # Statistics off and one row group: the bytes then depend on the data alone, so the hash is stable.
        frame.write_parquet(tmp, compression="zstd", statistics=False, row_group_size=max(frame.height, 1))
        sha = _sha256_file(tmp)
        final = folder / f"{sha}.parquet"
        os.replace(tmp, final)
    except (OSError, pl.exceptions.ComputeError) as exc:
        raise _write_error(f"a {kind} artifact", root, exc) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return ArtifactRef(kind=kind, sha256=sha, rows=frame.height)


def _write_error(what: str, root: Path | None, exc: BaseException) -> StoreWriteError:
    """One line: which store, why (the OS's words), how much room it has, and that nothing partial stayed."""
    store = store_root(root)
    probe = next((p for p in (store, *store.parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(probe)
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):  # copytree: (src, dst, why)
        reason = str(exc.args[0][0][-1])
    else:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    return StoreWriteError(
        f"cannot write {what} to the store {store}: {reason}; the volume has {human_bytes(usage.free)} free of "
        f"{human_bytes(usage.total)}; nothing half-written was kept: free space (or set KD_STORE to a larger, writable "
        "volume) and rerun, which recomputes only what is missing"
    )


def human_bytes(n: float) -> str:
    """A size as people read it on a disk: `812 B`, `4.2 MB` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def read_artifact(ref: ArtifactRef, root: Path | None = None) -> pl.DataFrame:
    path = ref.path(root)
    if not path.exists():
        raise ArtifactMissing(f"artifact {ref} is missing: expected file {path}")
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise ArtifactCorrupt(
            f"artifact {ref} at {path} cannot be read ({type(exc).__name__}); it is damaged: rerun the flow, which "
            "quarantines it and recomputes the stage that made it"
        ) from exc


class ArtifactCorrupt(ArtifactMissing):
    """A reference whose bytes no longer match its name (a truncated copy, a half-synced shared volume)."""


def is_sound(ref: ArtifactRef, root: Path | None = None) -> bool:
    """Whether the artifact exists and its bytes still hash to its name (a file of an adapter folder included).

    sha256 runs at ~1 GB/s and a grid's artifacts are megabytes, so every cached result is checked this way.
    """
    path = ref.path(root)
    if not path.exists():
        return False
    if ref.kind in DIRECTORY_KINDS:
        return path.is_dir() and _directory_sha256(path) == ref.sha256
    return path.is_file() and _sha256_file(path) == ref.sha256


def quarantine(ref: ArtifactRef, root: Path | None = None, made_by: str = "?") -> Path | None:
    """Move a damaged artifact to `<store>/.quarantine/<kind>/` (kept for inspection, out of every read path).

    A missing artifact has nothing to move and gets no line; a damaged one is named once, with the stage that made it.
    """
    path = ref.path(root)
    if not path.exists():
        return None
    target = store_root(root) / ".quarantine" / ref.kind / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(path, target)
    _log.warning("artifact %s (kind %s, made by stage %s) does not match its hash: moved to %s; the stage is "
                 "recomputed", path.name, ref.kind, made_by, target)
    return target


def write_directory(source: Path, kind: str, root: Path | None = None) -> ArtifactRef:
    """Move a finished folder (an adapter, say) into the store under the hash of its files' names and bytes."""
    if kind not in DIRECTORY_KINDS:
        raise ValueError(f"write_directory: kind {kind!r} is not a directory kind {sorted(DIRECTORY_KINDS)}")
    files = sorted(p for p in Path(source).rglob("*") if p.is_file())
    ref = ArtifactRef(kind=kind, sha256=_directory_sha256(Path(source)), rows=len(files))
    final = ref.path(root)
    if final.exists():
        return ref
    staging: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
        shutil.copytree(source, staging, dirs_exist_ok=True)
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(f"an {kind} folder", root, exc) from exc
    try:
        os.replace(staging, final)
    except OSError:  # another process landed the same content first
        shutil.rmtree(staging, ignore_errors=True)
    return ref


def _directory_sha256(folder: Path) -> str:
    """The hash of a folder: its files' relative names and bytes, in name order."""
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(folder)).encode())
        digest.update(_sha256_file(f).encode())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
