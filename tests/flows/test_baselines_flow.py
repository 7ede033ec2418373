from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
from prefect.client.orchestration import get_client

from flows.baselines import BaselineRun, baselines_flow
from kd_bundle.store import read_artifact

from .conftest import task_states

SMALL = BaselineRun(domains=("food",), max_train_sessions=120, max_test_sessions=27)


# per domain: load, mine, 5 x (predict, score): pattern, category and the three positional references; then collect
N_TASKS = 12 + 1


def _run(run: BaselineRun, expected: int = N_TASKS):
    state = baselines_flow(run, return_state=True)
    assert state.is_completed(), state
    return state.result(), task_states(state.state_details.flow_run_id, expected=expected)


def test_second_run_recomputes_nothing(isolated_store):
    table, first = _run(SMALL)
    assert all(s == ["Completed"] for s in first.values()), first

    again, second = _run(SMALL)
    assert again == table
    assert sorted(second) == sorted(first)
    assert all(s == ["Cached"] for s in second.values()), second

    results = read_artifact(table)
    assert results["method"].to_list() == ["pattern-baseline", "category-baseline", "first-two", "last-two",
                                           "whole-session"]
    assert results["n_sessions"].to_list() == [27] * 5
    assert results.filter(pl.col("method") == "first-two")["n_scored"].item() == 27, "every session has 2+ products"
    published = pl.read_parquet(isolated_store / "published" / "baselines.parquet")
    assert published.equals(results)
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    assert any(a.key == "baselines" for a in artifact)


def test_published_predictions_are_what_the_score_cli_reads(isolated_store):
    table, _ = _run(SMALL)
    folder = isolated_store / "published" / "baselines" / "predictions"
    files = sorted(p.name for p in folder.glob("*.jsonl") if "-baseline-" in p.name.removeprefix("food-baseline"))
    assert files == ["food-baseline-category-baseline-none-none-all-1.jsonl",
                     "food-baseline-pattern-baseline-none-none-all-1.jsonl"]
    row = read_artifact(table).filter(pl.col("method") == "pattern-baseline").row(0, named=True)
    scored = subprocess.run([sys.executable, "-m", "kd_bundle", "score", "--domain", "food",
                             "--predictions", str(folder / files[1])], capture_output=True, text=True, check=True)
    cli = json.loads(scored.stdout)
    # the CLI scores against all 180 test sessions: the 153 outside the slice are missing, not wrong
    assert cli["n_missing"] == 180 - row["n_sessions"]
    assert (cli["n_scored"], cli["precision"], cli["recall"]) == (row["n_scored"], row["precision"], row["recall"])


def test_changed_config_recomputes_only_downstream():
    _run(SMALL)
    _, states = _run(SMALL.model_copy(update={"patterns": SMALL.patterns.model_copy(update={"min_support": 0.01})}))
    assert states["load-sessions-food"] == ["Cached"]
    assert all(s == ["Completed"] for name, s in states.items() if name.startswith(("mine", "predict-pattern")))
    assert states["predict-category-baseline"] == ["Cached"]  # the category bundler never reads patterns


def test_deleted_artifact_is_recomputed_not_trusted():
    table, _ = _run(SMALL)
    path = table.path()
    path.unlink()
    again, states = _run(SMALL, expected=N_TASKS + 1)
    assert again == table and path.exists()
    # the cache hit handed back the stale ref, so the stage ran once more with a refreshed cache record
    assert sorted(states["collect-results"]) == ["Cached", "Completed"]
    assert states["load-sessions-food"] == ["Cached"]


def test_truncated_artifact_is_quarantined_and_recomputed(isolated_store, caplog):
    table, _ = _run(SMALL)
    predictions = sorted((isolated_store / "store" / "predictions").glob("*.parquet"))
    assert predictions, "the flow wrote prediction artifacts"
    damaged = predictions[0]
    damaged.write_bytes(damaged.read_bytes()[:1000])  # what an interrupted copy leaves
    with caplog.at_level("WARNING", logger="kd_bundle.store"):
        again, states = _run(SMALL, expected=N_TASKS + 1)
    assert again == table and damaged.exists()
    assert pl.read_parquet(damaged).height > 0, "recomputed with the same bytes"
    assert (isolated_store / "store" / ".quarantine" / "predictions" / damaged.name).stat().st_size == 1000
    lines = [r.getMessage() for r in caplog.records if "does not match its hash" in r.getMessage()]
    assert len(lines) == 1 and damaged.name in lines[0] and "stage predict_baseline" in lines[0], lines
    assert states["load-sessions-food"] == ["Cached"]


def test_published_table_carries_a_run_manifest_outside_the_cache(isolated_store):
    import hashlib
    from importlib import metadata

    import pyarrow.parquet as pq

    from kd_bundle.config import settings
    from kd_bundle.manifest import git_commit, read_manifest

    table, _ = _run(SMALL)
    published = isolated_store / "published" / "baselines.parquet"
    manifest = read_manifest(published)
    assert manifest["kd_bundle_commit"] == git_commit() and len(manifest["kd_bundle_commit"].split("+")[0]) == 40
    for package in ("torch", "transformers", "peft", "polars", "prefect", "pyarrow"):
        assert manifest["packages"][package] == metadata.version(package)
    assert manifest["seeds"] == {}  # the baselines flow takes no seed; the research flows carry theirs
    assert manifest["device"].startswith(("cpu", "cuda"))
    # the data hash covers the bytes of food's source files: a changed file changes it
    food = settings().data_root / "food"
    assert len(manifest["data_sha256"]) == 64
    assert hashlib.sha256((food / "aicl" / "split.csv").read_bytes()).hexdigest() != manifest["data_sha256"]
    # the store's artifact (the cache's view) has no manifest: the content hash, and every key, stay as they were
    assert b"kd_bundle.manifest" not in (pq.read_schema(table.path()).metadata or {})
    assert hashlib.sha256(table.path().read_bytes()).hexdigest() == table.sha256
    assert pl.read_parquet(published).equals(read_artifact(table))
