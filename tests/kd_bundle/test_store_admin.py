"""store verify / store gc on a real store: Parquet artifacts by write_artifact, an adapter folder by write_directory,
and result records in the format Prefect 3.9 writes with the JSON serializer (observed in the baselines flow tests)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import save_file

from kd_bundle.__main__ import main
from kd_bundle.report.costs import train_stats_path
from kd_bundle.store import ArtifactRef, write_artifact, write_directory
from kd_bundle.store_admin import gc, verify
from kd_bundle.store_records import GcRefused, default_records_dir

DAY_AGO = time.time() - 86400


def prefect_record(folder: Path, key: str, value: dict, serializer: str = "json") -> Path:
    """A result record as Prefect's local result storage holds it: metadata, and the serialized value as a string."""
    metadata = {"storage_key": str(folder / key), "expiration": None, "prefect_version": "3.9.1",
                "storage_block_id": None, "serializer": {"type": serializer}}
    if serializer == "json":
        metadata["serializer"].update(jsonlib="json", object_encoder="prefect.serializers.prefect_json_object_encoder",
                                      object_decoder="prefect.serializers.prefect_json_object_decoder",
                                      dumps_kwargs={}, loads_kwargs={})
        result = json.dumps(value)
    else:
        result = base64.b64encode(pickle.dumps(value)).decode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / key).write_text(json.dumps({"metadata": metadata, "result": result}))
    return folder / key


def ref_value(ref: ArtifactRef) -> dict:
    return {"__class__": "kd_bundle.store.ArtifactRef", "data": ref.model_dump()}


def age(*paths: Path, when: float = DAY_AGO) -> None:
    for path in paths:
        os.utime(path, (when, when))


def _adapter(tmp: Path, seed: int) -> Path:
    folder = tmp / f"adapter-src-{seed}"
    folder.mkdir()
    weights = np.random.default_rng(seed).standard_normal((64, 256)).astype(np.float32)
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": weights}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "seed": seed}))
    return folder


@pytest.fixture
def store(tmp_path: Path) -> dict:
    """Live: sessions, a kept adapter (record), a results artifact (record) naming one predictions artifact, and a
    predictions artifact named only by a published table. Dead: two predictions, one adapter with training stats."""
    root, records = tmp_path / "store", tmp_path / "prefect-results"
    sessions = write_artifact(pl.DataFrame({"session_id": range(300), "title": [f"item {i}" for i in range(300)]}),
                              "sessions", root)
    preds = [write_artifact(pl.DataFrame({"session_id": range(50), "answer": [f"p{i}-{j}" for j in range(50)]}),
                            "predictions", root) for i in range(4)]
    results = write_artifact(pl.DataFrame({"rq": ["rq1"], "predictions_sha256": [preds[0].sha256]}), "results", root)
    kept, dead = (write_directory(_adapter(tmp_path, seed), "adapter", root) for seed in (1, 2))
    for ref in (kept, dead):
        train_stats_path(ref.path(root)).write_text(json.dumps({"seconds": 1.0, "train_tokens": 10}))
    (root / "teacher").mkdir()
    (root / "teacher" / "requests.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(100))
    prefect_record(records, "a" * 32, ref_value(sessions))
    prefect_record(records, "b" * 32, ref_value(results))
    prefect_record(records, "c" * 32, {"__class__": "tasks.student.Trained", "data": {"adapter": kept.model_dump()}})
    published = tmp_path / "published"
    published.mkdir()
    pl.DataFrame({"rq": ["rq2"], "predictions_sha256": [preds[1].sha256]}).write_parquet(published / "grid.parquet")
    everything = [r.path(root) for r in (sessions, *preds, results, kept, dead)]
    age(*everything, *(train_stats_path(r.path(root)) for r in (kept, dead)))
    return {"root": root, "records": records, "published": published, "sessions": sessions, "preds": preds,
            "results": results, "kept": kept, "dead": dead}


def _damage(store: dict) -> dict[str, Path]:
    root = store["root"]
    truncated, flipped = store["preds"][2].path(root), store["sessions"].path(root)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    config = store["kept"].path(root) / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 4', '"r": 8'))
    return {"predictions": truncated, "sessions": flipped, "adapter": store["kept"].path(root)}


def test_verify_names_each_damaged_artifact_and_passes_sound_ones(store):
    clean = verify(store["root"])
    assert clean.checked == 8 and clean.bad == ()
    assert clean.bytes == sum(p.stat().st_size for p in store["root"].rglob("*")
                              if p.is_file() and "teacher" not in p.parts and not p.name.endswith(".train_stats.json"))
    damaged = _damage(store)
    report = verify(store["root"])
    assert report.checked == 8
    assert {(b.kind, b.name) for b in report.bad} == {(kind, path.name) for kind, path in damaged.items()}
    problems = {b.kind: b.problem for b in report.bad}
    assert f"{damaged['predictions'].stat().st_size} bytes no longer hash" in problems["predictions"]
    assert "files no longer hash" in problems["adapter"]
    assert all(path.exists() for path in damaged.values())  # without --repair nothing moves


def test_verify_repair_quarantines_the_bad_and_leaves_the_rest(store):
    damaged = _damage(store)
    report = verify(store["root"], repair=True)
    assert len(report.bad) == 3
    for kind, path in damaged.items():
        assert not path.exists()
        assert (store["root"] / ".quarantine" / kind / path.name).exists()
    assert {b.quarantined_to for b in report.bad} == {store["root"] / ".quarantine" / k / p.name
                                                      for k, p in damaged.items()}
    again = verify(store["root"])
    assert again.checked == 5 and again.bad == ()


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _dead_paths(store: dict) -> list[Path]:
    root = store["root"]
    return [store["preds"][2].path(root), store["preds"][3].path(root), store["dead"].path(root),
            train_stats_path(store["dead"].path(root))]


def test_gc_dry_run_removes_nothing_and_reports_the_bytes(store):
    before = _tree(store["root"])
    report = gc(store["root"], [store["records"]], dry_run=True, results_dir=store["published"])
    assert _tree(store["root"]) == before
    dead = _dead_paths(store)
    adapter_bytes = sum(f.stat().st_size for f in dead[2].rglob("*") if f.is_file()) + dead[3].stat().st_size
    assert report.removed["adapter"].artifacts == 1 and report.removed["adapter"].bytes == adapter_bytes
    assert report.removed["predictions"].artifacts == 2
    assert report.removed["predictions"].bytes == dead[0].stat().st_size + dead[1].stat().st_size
    assert set(report.removed) == {"adapter", "predictions"} and report.records == 3


def test_gc_removes_exactly_the_unreferenced_and_their_train_stats(store):
    root = store["root"]
    young_orphan = write_artifact(pl.DataFrame({"x": [1, 2, 3]}), "predictions", root)  # a run's, record to come
    old_tmp, young_tmp = root / "predictions" / ".tmp-old.parquet", root / "predictions" / ".tmp-new.parquet"
    old_tmp.write_bytes(b"half a write")
    young_tmp.write_bytes(b"a write in progress")
    age(old_tmp)
    # A pickled record cannot be decoded here; the hash inside its bytes still keeps its artifact.
    prefect_record(store["records"], "d" * 32, {"ref": store["preds"][3].model_dump()}, serializer="pickle")
    dead = [p for p in _dead_paths(store) if p != store["preds"][3].path(root)]
    dead_adapter = store["dead"].path(root)
    keep = {path: size for path, size in ((root / name, size) for name, size in _tree(root).items())
            if path not in dead and path != old_tmp and dead_adapter not in path.parents}
    report = gc(root, [store["records"]], results_dir=store["published"])
    assert not any(p.exists() for p in dead) and not old_tmp.exists()
    assert report.removed["predictions"].artifacts == 1 and report.removed["adapter"].artifacts == 1
    assert {p: p.stat().st_size for p in keep if p.exists()} == keep  # every other file stays, unchanged
    assert young_orphan.path(root).exists() and young_tmp.exists() and report.kept_young == 1
    assert (root / "teacher" / "requests.sqlite").exists()
    assert train_stats_path(store["kept"].path(root)).exists()
    assert report.opaque_records == 1 and report.tmp_removed.artifacts == 1
    # Kept: the record's results artifact, the predictions it names, and the predictions only a published table names.
    for ref in (store["sessions"], store["results"], store["kept"], store["preds"][0], store["preds"][1],
                store["preds"][3]):
        assert ref.path(root).exists()
    assert verify(root).bad == ()
    again = gc(root, [store["records"]], results_dir=store["published"])
    assert again.removed == {} and again.tmp_removed.artifacts == 0


def test_gc_refuses_without_records_and_removes_nothing(store, tmp_path):
    before = _tree(store["root"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-records").mkdir()
    (tmp_path / "not-records" / "notes.txt").write_text("hello")
    other = ArtifactRef(kind="predictions", sha256="e" * 64, rows=1)  # another project's records
    prefect_record(tmp_path / "other-project", "f" * 32, ref_value(other))
    for folder, says in ((tmp_path / "missing", "no records folder"), (tmp_path / "empty", "holds no result record"),
                         (tmp_path / "not-records", "is a Prefect JSON result record"),
                         (tmp_path / "other-project", "names an artifact of")):
        with pytest.raises(GcRefused, match=says):
            gc(store["root"], [folder], results_dir=store["published"])
    assert _tree(store["root"]) == before


def test_records_folder_is_found_as_prefect_finds_it(tmp_path):
    env = {"PREFECT_HOME": str(tmp_path / "home")}
    assert default_records_dir(env, cwd=tmp_path) == tmp_path / "home" / "storage"
    (tmp_path / "pyproject.toml").write_text('[tool.prefect.results]\nlocal_storage_path = "cache/records"\n')
    assert default_records_dir(env, cwd=tmp_path) == tmp_path / "cache" / "records"
    env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(tmp_path / "from-env")
    assert default_records_dir(env, cwd=tmp_path) == tmp_path / "from-env"


def test_store_commands_through_the_cli(store, monkeypatch, capsys):
    monkeypatch.setenv("KD_STORE", str(store["root"]))
    monkeypatch.setenv("KD_RESULTS_DIR", str(store["published"]))
    damaged = _damage(store)
    assert main(["store", "verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1].startswith("checked 8 artifacts") and "3 bad" in out[-1]
    assert any(line.startswith(f"predictions {damaged['predictions'].name}: ") for line in out)
    assert main(["store", "verify", "--repair"]) == 0
    assert "moved to" in capsys.readouterr().out and not damaged["sessions"].exists()
    assert main(["store", "gc", "--dry-run", "--records", str(store["records"])]) == 0
    out = capsys.readouterr().out
    assert "predictions: would remove 1 artifact, " in out and "adapter: would remove 1 artifact, " in out
    assert store["dead"].path(store["root"]).exists()
    assert main(["store", "gc", "--records", str(store["root"] / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m kd_bundle store gc: error: no records folder")
    assert store["dead"].path(store["root"]).exists()
