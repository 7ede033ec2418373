"""A store on a full or read-only volume fails a write with one line naming the store and its free space, and
leaves nothing half-written; with room again the same write lands."""

from __future__ import annotations

import os

import polars as pl
import pytest

from kd_bundle.store import StoreWriteError, read_artifact, write_artifact, write_directory
from tests.tmpfs import remount, tmpfs


def _incompressible(n_rows: int) -> pl.DataFrame:
    return pl.DataFrame({"blob": [os.urandom(512) for _ in range(n_rows)]})  # zstd cannot shrink random bytes


def _leftovers(store) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def test_full_volume_fails_in_one_line_and_leaves_nothing(tmp_path):
    with tmpfs(tmp_path / "store", size="2m") as store:
        with pytest.raises(StoreWriteError) as failed:
            write_artifact(_incompressible(8_000), "predictions", root=store)  # ~4 MB into 2 MB
        message = str(failed.value)
        assert "\n" not in message and str(store) in message and "No space left on device" in message, message
        assert " free of 2.1 MB" in message, message  # 2 MiB, in powers of 1000
        assert _leftovers(store) == [], "no temporary or partial file stays behind"

        small = _incompressible(100)
        ref = write_artifact(small, "predictions", root=store)  # the room the failed write took is back
        assert read_artifact(ref, root=store).equals(small)


def test_adapter_folder_on_a_full_volume_leaves_no_staging(tmp_path):
    source = tmp_path / "adapter-out"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    (source / "adapter_model.safetensors").write_bytes(os.urandom(3 * 2**20))
    with tmpfs(tmp_path / "store", size="2m") as store:
        with pytest.raises(StoreWriteError, match="cannot write an adapter folder to the store .*No space left"):
            write_directory(source, "adapter", root=store)
        assert _leftovers(store) == [] and list((store / "adapter").iterdir()) == []
        remount(store, "size=8m")
        ref = write_directory(source, "adapter", root=store)
        assert (ref.path(store) / "adapter_model.safetensors").read_bytes() == \
            (source / "adapter_model.safetensors").read_bytes()


def test_read_only_volume_says_so(tmp_path):
    with tmpfs(tmp_path / "store", size="2m") as store:
        remount(store, "ro")
        with pytest.raises(StoreWriteError, match="Read-only file system") as failed:
            write_artifact(_incompressible(10), "patterns", root=store)
        assert str(store) in str(failed.value)
        remount(store, "rw")
        assert _leftovers(store) == []
