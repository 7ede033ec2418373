"""Run manifests: seeds found at any depth of a run's parameters, and a round trip through Parquet metadata."""

from __future__ import annotations

import polars as pl

from kd_bundle.config import DataConfig
from kd_bundle.manifest import build_manifest, read_manifest, seeds_in, write_with_manifest


def test_seeds_are_found_in_nested_parameters_and_configs():
    parameters = {"domain": "food", "pipeline": {"sampling_seed": 7, "student": {"max_new_tokens": 8}}, "data": DataConfig(split_seed=3)}
    seeds = seeds_in(parameters)
    assert seeds["pipeline.sampling_seed"] == 7 and seeds["data.split_seed"] == 3
    assert all("seed" in path.rsplit(".", 1)[-1] for path in seeds)


def test_manifest_round_trips_through_parquet_metadata_without_touching_the_data(tmp_path):
    source = tmp_path / "table.parquet"
    pl.DataFrame({"domain": ["food"], "precision": [0.5]}).write_parquet(source)
    manifest = build_manifest(seeds={"pipeline.sampling_seed": 0}, data_sha256="ab" * 32)
    write_with_manifest(source, tmp_path / "published.parquet", manifest)
    assert read_manifest(tmp_path / "published.parquet") == manifest
    assert pl.read_parquet(tmp_path / "published.parquet").equals(pl.read_parquet(source))
