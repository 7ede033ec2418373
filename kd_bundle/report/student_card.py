"""What goes on an exported student's model card, and the `export` command.

    python -m kd_bundle export --adapter DIR [--results RESULTS.parquet --row N] --out DIR
    python -m kd_bundle export --best RESULTS.parquet --out DIR        # the row with the lowest valid_loss

The facts come from a results row (labels, knowledge quantity, validation loss, test metrics with the report's
bootstrap intervals), the adapter's training stats beside its folder and the published table's run manifest (commit,
data hash); kd_bundle.student.export merges the adapter and writes the folder and the card.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import polars as pl

from kd_bundle.student.export import CardFacts, ExportError, check_adapter, export_student


def facts_from_adapter(adapter_dir: Path) -> dict[str, Any]:
    """Training facts from the adapter's stats beside its folder (kd_bundle.report.costs.train_stats_path)."""
    from kd_bundle.report.costs import read_train_stats

    stats = read_train_stats(adapter_dir)
    keys = ("train_steps", "best_step", "train_examples", "train_seconds", "valid_loss")
    return {k: stats.get(k) for k in keys if stats.get(k) is not None}


def facts_from_results(results_path: Path, row: int) -> dict[str, Any]:
    """Card facts of results row `row` (0-based): labels, knowledge quantity, validation loss, training, test metrics
    with 95% bootstrap intervals over its test sessions, and the run manifest's commit and data hash."""
    frame = read_results(results_path)
    if not 0 <= row < frame.height:
        raise ExportError(f"{results_path}: no row {row} (the table has {frame.height} rows, numbered from 0)")
    return facts_from_row(frame.row(row, named=True), results_path, row)


def facts_from_row(values: dict[str, Any], results_path: Path, row: int) -> dict[str, Any]:
    from kd_bundle.evaluation.results import QUANTITY_COLUMNS
    from kd_bundle.report.bootstrap import interval, session_arrays

    facts: dict[str, Any] = {k: values.get(k) for k in ("domain", "knowledge_format", "utilization", "strategy",
                                                         "ratio", "train_steps", "best_step", "train_examples",
                                                         "train_seconds", "valid_loss")}
    facts["knowledge_quantity"] = {k: values.get(k) for k in QUANTITY_COLUMNS if k in values}
    arrays = session_arrays([values])
    if arrays is not None:
        facts["test_metrics"] = interval(arrays[1])
        facts["test_sessions"] = len(arrays[0])
    else:  # a table without per-session values: the point estimates, no interval
        from kd_bundle.evaluation.results import METRIC_COLUMNS

        facts["test_metrics"] = {m: values.get(m) for m in METRIC_COLUMNS}
        facts["test_sessions"] = values.get("n_sessions")
    facts["source"] = f"{results_path} row {row}"
    facts.update(manifest_facts(results_path))
    return {k: v for k, v in facts.items() if v is not None}


def manifest_facts(results_path: Path) -> dict[str, Any]:
    """Commit and data hash from a published results table's manifest; {} for a table without one."""
    from kd_bundle.manifest import read_manifest

    try:
        manifest = read_manifest(results_path)
    except KeyError:
        return {}
    return {"commit": manifest.get("kd_bundle_commit"), "data_sha256": manifest.get("data_sha256")}


def read_results(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ExportError(f"{path}: cannot read the results table ({type(exc).__name__}: {exc})") from exc


def best_row(results_path: Path) -> tuple[int, Path]:
    """(row, adapter folder) of the student row with the lowest `valid_loss`; its adapter is found in the store by
    the row's `adapter_sha256`."""
    from kd_bundle.store import ArtifactRef

    frame = read_results(results_path).with_row_index("_row")
    if "adapter_sha256" not in frame.columns:
        raise ExportError(f"{results_path}: no adapter_sha256 column (a table written before rows named their "
                          "adapter); use --adapter DIR --results FILE --row N")
    if "valid_loss" not in frame.columns:
        raise ExportError(f"{results_path}: no valid_loss column, so no row can be chosen by validation")
    candidates = frame.filter(pl.col("valid_loss").is_not_null() & pl.col("adapter_sha256").is_not_null()
                              & (pl.col("adapter_sha256") != ""))
    if candidates.is_empty():
        raise ExportError(f"{results_path}: no row has both a valid_loss and an adapter_sha256 (no trained student)")
    best = candidates.sort("valid_loss", "_row").row(0, named=True)
    adapter = ArtifactRef(kind="adapter", sha256=best["adapter_sha256"], rows=0).path()
    if not adapter.is_dir():
        raise ExportError(f"{results_path} row {best['_row']}: its adapter {adapter} is not in this store")
    return int(best["_row"]), adapter


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle export`."""
    from kd_bundle.manifest import git_commit

    parser = argparse.ArgumentParser(prog="python -m kd_bundle export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", type=Path, help="a trained adapter folder (e.g. <store>/adapter/<sha256>)")
    which.add_argument("--best", type=Path, metavar="RESULTS", help="a results table: export the adapter of its "
                       "row with the lowest valid_loss (needs the adapter_sha256 column)")
    parser.add_argument("--results", type=Path, help="with --adapter: the results table whose --row goes on the card")
    parser.add_argument("--row", type=int, help="with --results: the row (0-based) the adapter made")
    parser.add_argument("--teacher", default=None, help="the teacher model that distilled the knowledge, for the "
                        "card (default: TeacherConfig's default, 'smollm2', the embedded teacher)")
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if (args.results is None) != (args.row is None) or (args.best and args.results):
        parser.error("--results and --row go together, and only with --adapter")
    if args.best:
        row, adapter = best_row(args.best)
        results, args.row = args.best, row
    else:
        adapter, results = args.adapter, args.results
        check_adapter(adapter)
    facts = facts_from_adapter(adapter)
    if results is not None:
        facts.update(facts_from_results(results, args.row))
    teacher = args.teacher or default_teacher()
    out = export_student(adapter, args.out, CardFacts(**facts, teacher=teacher, export_commit=git_commit()))
    print(f"exported {adapter} to {out}; load it with AutoModelForCausalLM.from_pretrained('{out}'), "
          f"serve it with: python -m kd_bundle serve {out}")
    return 0


def default_teacher() -> str:
    from kd_bundle.teacher import TeacherConfig

    return TeacherConfig().model
