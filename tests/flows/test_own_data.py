"""Your own data through the entry points a user runs: a data folder (examples/my-shop, the README's worked example)
labels every row and artifact, caches by the tables' bytes (the same tables elsewhere are reused, changed tables are
new data), and the run manifest hashes the files read."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import polars as pl
import pytest

from flows.baselines import main as baselines_main
from flows.research import rq1_knowledge_format
from kd_bundle.cli_errors import run_cli
from kd_bundle.grid import RQ1Grid
from kd_bundle.manifest import files_sha256, read_manifest
from kd_bundle.store import read_artifact

from .conftest import task_states

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my-shop"
SMALL = RQ1Grid(formats=("raw", "rules"), utilizations=("icl", "sft"))


def _rq1(cfg, **data):
    state = rq1_knowledge_format(grid=SMALL, pipeline=cfg, return_state=True, **data)
    assert state.is_completed(), state
    return read_artifact(state.result()), task_states(state.state_details.flow_run_id)


def test_rq1_on_a_data_folder_is_labelled_and_cached_by_content(pipeline, isolated_store, tmp_path):
    _, cfg = pipeline
    shop = shutil.copytree(EXAMPLE, tmp_path / "my-shop")
    table, first = _rq1(cfg, data_dir=str(shop))
    assert set(table["domain"]) == {"my-shop"} and table.filter(pl.col("method") == "student").height == 4 + 1
    assert first["load-sessions-my-shop"] == ["Completed"], first
    published = isolated_store / "published" / "rq1-my-shop.parquet"
    manifest = read_manifest(published)
    assert manifest["data_files"] == {"my-shop": [str(shop / "items.csv"), str(shop / "bundles.csv")]}
    assert manifest["data_sha256"] == files_sha256([shop / "items.csv", shop / "bundles.csv"])
    assert (isolated_store / "published" / "rq1-my-shop" / "report.md").exists()

    # the same tables in another folder, given the same label: nothing is recomputed
    moved = shutil.copytree(EXAMPLE, tmp_path / "elsewhere" / "shop-copy")
    again, second = _rq1(cfg, data_dir=str(moved), domain_name="my-shop")
    assert {k: v for k, v in second.items() if set(v) != {"Cached"}} == {}, second
    assert again.drop("wall_seconds").equals(table.drop("wall_seconds"))

    # one changed title is new data: the sessions are reloaded under the same folder name
    items = pl.read_csv(shop / "items.csv", infer_schema=False)
    first_test = items.filter(pl.col("split") == "test")["session_id"][0]
    items = items.with_columns(pl.when((pl.col("session_id") == first_test) & (pl.col("position") == "1"))
                               .then(pl.lit("Renamed product")).otherwise(pl.col("title")).alias("title"))
    items.write_csv(shop / "items.csv")
    _, third = _rq1(cfg, data_dir=str(shop))
    assert third["load-sessions-my-shop"] == ["Completed"], third
    assert read_manifest(published)["data_sha256"] != manifest["data_sha256"]
    assert hashlib.sha256((shop / "items.csv").read_bytes()).hexdigest() not in manifest.values()


def test_baselines_command_takes_a_data_folder(isolated_store, capsys):
    assert run_cli("python -m flows.baselines", lambda: baselines_main(["--data", str(EXAMPLE)])) == 0
    table = pl.read_parquet(isolated_store / "published" / "baselines.parquet")
    assert set(table["domain"]) == {"my-shop"} and table["n_sessions"].to_list() == [40] * 5
    assert "my-shop" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--data", "/no/such/folder"], "data folder /no/such/folder: no such folder"),
    (["--data", str(EXAMPLE), "--domain-name", "!!!"], "cannot make a domain label of '!!!'"),
    (["--domain-name", "shop"], "labels a data folder: give data_dir (--data) too"),
])
def test_bad_data_options_fail_in_one_line(argv, words, capsys):
    assert run_cli("python -m flows.baselines", lambda: baselines_main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_a_folder_named_like_a_shipped_domain_needs_a_label(tmp_path, capsys):
    food = shutil.copytree(EXAMPLE, tmp_path / "food")
    assert run_cli("python -m flows.baselines", lambda: baselines_main(["--data", str(food)])) == 2
    assert "named like the shipped domain 'food': give --domain-name" in capsys.readouterr().err
