"""Keeping the artifact store honest and small: `python -m kd_bundle store verify [--repair]` and `store gc`.

verify re-hashes every artifact and names each one whose bytes no longer match its name; --repair moves those to
`<store>/.quarantine/` (the stage that made one recomputes it on the next run). gc removes artifacts that no cache
record still points at (outputs of failed or killed stages, of refreshed or deleted records). The live set is every
hash named by a Prefect result record (kd_bundle.store_records), by a published results table under
`settings().results_dir`, or by a `*_sha256` column of a live artifact. gc refuses outright when it finds no records,
since everything would then look unreferenced; it keeps what is younger than `keep_newer_than_s` (a run in progress
writes its artifact before its record) and never touches `teacher/`, `.quarantine/`, `.logs/`, `.locks/`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from kd_bundle.config import settings
from kd_bundle.store import DIRECTORY_KINDS, ArtifactRef, human_bytes, is_sound, quarantine, store_root
from kd_bundle.store_records import HASH, GcRefused, default_records_dir, live_hashes

TMP_PREFIX = ".tmp-"  # interrupted writes of kd_bundle.store
HOUR_S = 3600.0
NOT_KINDS = {"teacher"}  # the teacher's request cache (requests.sqlite): not artifacts, never collected


class StoredArtifact(BaseModel, frozen=True):
    kind: str
    sha256: str
    path: Path
    bytes: int


class BadArtifact(BaseModel, frozen=True):
    kind: str
    name: str
    problem: str
    quarantined_to: Path | None = None


class VerifyReport(BaseModel, frozen=True):
    root: Path
    checked: int
    bytes: int
    seconds: float
    bad: tuple[BadArtifact, ...]
    repaired: bool


class KindTally(BaseModel, frozen=True):
    artifacts: int = 0
    bytes: int = 0


class GcReport(BaseModel, frozen=True):
    root: Path
    records_dirs: tuple[Path, ...]
    records: int
    opaque_records: int  # not JSON results (pickled, foreign): kept alive by every hash their bytes contain
    live: int
    removed: dict[str, KindTally]  # kind -> what gc removed (or, dry run, would remove)
    tmp_removed: KindTally
    kept_young: int  # unreferenced but younger than keep_newer_than_s
    dry_run: bool


# --- what the store holds -------------------------------------------------------------------------------------------

def kind_folders(root: Path) -> list[Path]:
    """Folders of artifact kinds: every top-level folder but hidden ones (.quarantine, .logs, .locks) and teacher/."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_KINDS)


def stored_artifacts(root: Path) -> list[StoredArtifact]:
    """Every file or folder named as an artifact (`<sha256>.parquet`, or `<sha256>/` for a directory kind).

    Anything else under a kind folder (teacher/requests.sqlite, adapter training stats, .tmp- files) is not one.
    """
    found = []
    for folder in kind_folders(root):
        is_directory_kind = folder.name in DIRECTORY_KINDS
        for path in sorted(folder.iterdir()):
            stem = path.name if is_directory_kind else path.name.removesuffix(".parquet")
            if not HASH.fullmatch(stem) or (not is_directory_kind and not path.name.endswith(".parquet")):
                continue
            found.append(StoredArtifact(kind=folder.name, sha256=stem, path=path, bytes=_size(path)))
    return found


def companions(artifact: StoredArtifact) -> list[Path]:
    """Files beside an artifact that belong to it: `<sha256>.<anything>` (an adapter's `.train_stats.json`) and their
    `.<sha256>.<...>` staging copies. They carry no hash of their own and go when their artifact goes."""
    if artifact.kind not in DIRECTORY_KINDS:
        return []
    folder, name = artifact.path.parent, artifact.sha256
    return sorted(p for p in folder.iterdir()
                  if p != artifact.path and (p.name.startswith(f"{name}.") or p.name.startswith(f".{name}.")))


# --- verify ---------------------------------------------------------------------------------------------------------

def problem_of(artifact: StoredArtifact, root: Path) -> str | None:
    """What is wrong with one artifact, or None when its bytes still hash to its name (the check every stage runs)."""
    expected_dir = artifact.kind in DIRECTORY_KINDS
    if artifact.path.is_dir() != expected_dir:
        shapes = ("file", "folder") if expected_dir else ("folder", "file")
        return f"is a {shapes[0]}; a {artifact.kind} artifact is a {shapes[1]}"
    try:
        sound = is_sound(ArtifactRef(kind=artifact.kind, sha256=artifact.sha256, rows=0), root)
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
    if not sound:
        return ("its files no longer hash to its name (a file changed, went or came)" if expected_dir
                else f"its {artifact.bytes} bytes no longer hash to its name")
    return None


def verify(root: Path | None = None, repair: bool = False) -> VerifyReport:
    """Re-hash every artifact of the store; with `repair`, quarantine the ones that do not match their name."""
    root = _existing_store(root)
    started = time.perf_counter()
    artifacts = stored_artifacts(root)
    bad = []
    for artifact in artifacts:
        problem = problem_of(artifact, root)
        if problem is None:
            continue
        moved = None
        if repair:
            with _quiet(logging.getLogger("kd_bundle.store")):  # the report line says it, once
                moved = quarantine(ArtifactRef(kind=artifact.kind, sha256=artifact.sha256, rows=0), root,
                                   made_by="store verify")
        bad.append(BadArtifact(kind=artifact.kind, name=artifact.path.name, problem=problem, quarantined_to=moved))
    return VerifyReport(root=root, checked=len(artifacts), bytes=sum(a.bytes for a in artifacts),
                        seconds=time.perf_counter() - started, bad=tuple(bad), repaired=repair)


# --- gc -------------------------------------------------------------------------------------------------------------

def gc(root: Path | None, records_dirs: list[Path], dry_run: bool = False, results_dir: Path | None = None,
       keep_newer_than_s: float = HOUR_S, now: float | None = None) -> GcReport:
    """Remove every artifact no record names (and its companions), and `.tmp-` leftovers older than an hour."""
    root = _existing_store(root)
    now = time.time() if now is None else now
    artifacts = stored_artifacts(root)
    tables = {a.sha256: a.path for a in artifacts if a.path.is_file()}
    live, records, opaque = live_hashes(records_dirs, results_dir, {a.sha256 for a in artifacts}, tables)
    removed: dict[str, KindTally] = {}
    kept_young = 0
    for artifact in artifacts:
        if artifact.sha256 in live:
            continue
        if not artifact.path.exists():  # gone meanwhile (another gc, a quarantine)
            continue
        if now - artifact.path.stat().st_mtime < keep_newer_than_s:  # a run may have rewritten it meanwhile
            kept_young += 1
            continue
        doomed = [artifact.path, *companions(artifact)]
        size = artifact.bytes + sum(_size(p) for p in doomed[1:])
        tally = removed.get(artifact.kind, KindTally())
        removed[artifact.kind] = KindTally(artifacts=tally.artifacts + 1, bytes=tally.bytes + size)
        if not dry_run:
            for path in doomed:
                _remove(path)
    tmp = [p for folder in kind_folders(root) for p in folder.iterdir()
           if p.name.startswith(TMP_PREFIX) and now - p.stat().st_mtime >= max(keep_newer_than_s, HOUR_S)]
    tmp_tally = KindTally(artifacts=len(tmp), bytes=sum(_size(p) for p in tmp))
    if not dry_run:
        for path in tmp:
            _remove(path)
    return GcReport(root=root, records_dirs=tuple(records_dirs), records=records, opaque_records=opaque, live=len(live),
                    removed=removed, tmp_removed=tmp_tally, kept_young=kept_young, dry_run=dry_run)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _existing_store(root: Path | None) -> Path:
    root = store_root(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no store at {root} (set KD_STORE or pass --store)")
    return root


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    previous = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = previous


# --- the command line -----------------------------------------------------------------------------------------------

def _artifacts(n: int) -> str:
    return f"{n} artifact" + ("" if n == 1 else "s")


def verify_lines(report: VerifyReport) -> list[str]:
    lines = [f"{b.kind} {b.name}: {b.problem}" + (f"; moved to {b.quarantined_to}" if b.quarantined_to else "")
             for b in report.bad]
    verdict = (f"{len(report.bad)} bad, quarantined" if report.repaired and report.bad
               else f"{len(report.bad)} bad" + (" (rerun with --repair to quarantine them)" if report.bad else ""))
    lines.append(f"checked {_artifacts(report.checked)}, {human_bytes(report.bytes)} in {report.seconds:.2f} s: "
                 f"{verdict}")
    return lines


def gc_lines(report: GcReport) -> list[str]:
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{kind}: {verb} {_artifacts(t.artifacts)}, {human_bytes(t.bytes)}"
             for kind, t in sorted(report.removed.items())]
    if report.tmp_removed.artifacts:
        lines.append(f"interrupted writes (.tmp-*): {verb} {report.tmp_removed.artifacts}, "
                     f"{human_bytes(report.tmp_removed.bytes)}")
    total = sum(t.bytes for t in report.removed.values()) + report.tmp_removed.bytes
    count = sum(t.artifacts for t in report.removed.values())
    opaque = f", {report.opaque_records} not JSON (scanned for hashes)" if report.opaque_records else ""
    young = f"; kept {report.kept_young} unreferenced ones too young to collect" if report.kept_young else ""
    lines.append(f"{verb} {_artifacts(count)} ({human_bytes(total)}) from {report.root}; {report.live} hashes live "
                 f"in {report.records} records{opaque} ({', '.join(map(str, report.records_dirs))}){young}")
    return lines


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle store verify [--repair] [--store DIR]`;
    `python -m kd_bundle store gc [--dry-run] [--store DIR] [--records DIR]... [--results DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m kd_bundle store", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="re-hash every artifact; name the ones that do not match their name")
    check.add_argument("--repair", action="store_true", help="move bad artifacts to <store>/.quarantine/")
    collect = commands.add_parser("gc", help="remove artifacts no cache record points at")
    collect.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    collect.add_argument("--records", type=Path, action="append",
                         help="Prefect result storage folder (repeatable; default: as Prefect resolves it)")
    collect.add_argument("--results", type=Path, help="published results folder (default: KD_RESULTS_DIR)")
    for sub in (check, collect):
        sub.add_argument("--store", type=Path, help="store root (default: KD_STORE)")
    args = parser.parse_args(argv)
    prog = f"python -m kd_bundle store {args.command}"
    try:
        if args.command == "verify":
            report = verify(args.store, repair=args.repair)
            print("\n".join(verify_lines(report)))
            return 1 if report.bad and not report.repaired else 0
        records = args.records or [default_records_dir()]
        results = args.results if args.results is not None else settings().results_dir
        print("\n".join(gc_lines(gc(args.store, records, dry_run=args.dry_run, results_dir=results))))
        return 0
    except (GcRefused, OSError) as exc:  # a missing store, a file gc cannot remove: one line, never a traceback
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
