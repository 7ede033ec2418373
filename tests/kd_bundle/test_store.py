"""The content-addressed store: hashes depend on content only, writes are atomic, the root follows KD_STORE."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.store import (
    ArtifactMissing,
    ArtifactRef,
    read_artifact,
    store_root,
    write_artifact,
    write_directory,
)


def _frame(n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"session_id": list(range(1, n + 1)), "items": [["a", "b"]] * n})


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_same_frame_twice_same_hash_one_file(tmp_path: Path) -> None:
    first = write_artifact(_frame(), "sessions", root=tmp_path)
    second = write_artifact(_frame(), "sessions", root=tmp_path)  # equal content, a different frame object
    assert first == second
    assert first.rows == 3 and first.kind == "sessions"
    assert _files(tmp_path / "sessions") == [f"{first.sha256}.parquet"]  # one file and no .tmp- left over
    path = first.path(tmp_path)
    assert path == tmp_path / "sessions" / f"{first.sha256}.parquet"
    # The name is the sha256 of the file's bytes.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256
    assert read_artifact(first, root=tmp_path).equals(_frame())


def test_different_frames_different_hashes(tmp_path: Path) -> None:
    refs = [
        write_artifact(_frame(3), "x", root=tmp_path),
        write_artifact(_frame(4), "x", root=tmp_path),
        write_artifact(_frame(3).with_columns(pl.col("session_id") + 1), "x", root=tmp_path),
        write_artifact(_frame(3).rename({"items": "item_ids"}), "x", root=tmp_path),
    ]
    assert len({ref.sha256 for ref in refs}) == 4
    assert _files(tmp_path / "x") == sorted(f"{ref.sha256}.parquet" for ref in refs)
    assert [ref.rows for ref in refs] == [3, 4, 3, 3]


def test_empty_frame_round_trips(tmp_path: Path) -> None:
    empty = pl.DataFrame(schema={"a": pl.Int64, "b": pl.String})
    ref = write_artifact(empty, "empty", root=tmp_path)
    assert ref.rows == 0
    back = read_artifact(ref, root=tmp_path)
    assert back.schema == empty.schema and back.height == 0


def test_deleted_file_raises_artifact_missing_naming_path(tmp_path: Path) -> None:
    ref = write_artifact(_frame(), "patterns", root=tmp_path)
    path = ref.path(tmp_path)
    assert ref.exists(tmp_path)
    path.unlink()
    assert not ref.exists(tmp_path)
    with pytest.raises(ArtifactMissing) as err:
        read_artifact(ref, root=tmp_path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_ref_resolves_root_at_read_time(tmp_path: Path) -> None:
    ref = write_artifact(_frame(), "sessions", root=tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")  # moving the store keeps every ref valid
    assert read_artifact(ref, root=tmp_path / "new").equals(_frame())
    # A ref is small and JSON round-trips (Prefect hashes it as a cache input).
    assert ArtifactRef.model_validate_json(ref.model_dump_json()) == ref


def test_kd_store_env_var_moves_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_STORE", str(tmp_path / "elsewhere"))
    assert store_root() == tmp_path / "elsewhere"
    ref = write_artifact(_frame(), "sessions")
    assert (tmp_path / "elsewhere" / "sessions" / f"{ref.sha256}.parquet").is_file()
    assert ref.path() == tmp_path / "elsewhere" / "sessions" / f"{ref.sha256}.parquet"
    assert read_artifact(ref).equals(_frame())
    # The root is read per call: a changed environment is honoured at once.
    monkeypatch.setenv("KD_STORE", str(tmp_path / "other"))
    with pytest.raises(ArtifactMissing, match="other"):
        read_artifact(ref)
    # An explicit root beats the environment.
    assert store_root(tmp_path / "explicit") == tmp_path / "explicit"


def _adapter(folder: Path, weights: bytes = b"\x00\x01weights") -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "sub" / "weights.bin").write_bytes(weights)
    return folder


def test_write_directory_hashes_content(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ref = write_directory(_adapter(tmp_path / "run1"), "adapter", root=store)
    assert ref.rows == 2
    stored = ref.path(store)
    assert stored == store / "adapter" / ref.sha256  # a folder, no .parquet suffix
    assert (stored / "sub" / "weights.bin").read_bytes() == b"\x00\x01weights"
    assert (stored / "adapter_config.json").read_text() == '{"r": 8}'
    # Same content from another folder: the same ref and still one stored folder, no staging folder left.
    again = write_directory(_adapter(tmp_path / "run2"), "adapter", root=store)
    assert again == ref
    assert _files(store / "adapter") == [ref.sha256]
    # Different bytes or a different file name: a different hash.
    changed = write_directory(_adapter(tmp_path / "run3", weights=b"other"), "adapter", root=store)
    assert changed.sha256 != ref.sha256
    renamed = _adapter(tmp_path / "run4")
    (renamed / "sub" / "weights.bin").rename(renamed / "sub" / "weights2.bin")
    assert write_directory(renamed, "adapter", root=store).sha256 != ref.sha256
    assert len(_files(store / "adapter")) == 3


@pytest.mark.parametrize("kind", ["patterns", "sessions", "adapters"])
def test_write_directory_rejects_non_directory_kinds(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match=f"kind '{kind}' is not a directory kind"):
        write_directory(_adapter(tmp_path / "run"), kind, root=tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_damaged_artifacts_are_unsound_and_quarantined(tmp_path: Path) -> None:
    from kd_bundle.store import ArtifactCorrupt, is_sound, quarantine, write_directory

    ref = write_artifact(pl.DataFrame({"a": list(range(500))}), "results", root=tmp_path)
    assert is_sound(ref, tmp_path)
    path = ref.path(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    assert not is_sound(ref, tmp_path)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(ArtifactCorrupt, match=str(path)):
        read_artifact(ref, tmp_path)
    moved = quarantine(ref, tmp_path, made_by="collect-results")
    assert moved == tmp_path / ".quarantine" / "results" / path.name and not path.exists()

    source = tmp_path / "adapter-src"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (source / "adapter_config.json").write_text("{}")
    folder = write_directory(source, "adapter", root=tmp_path)
    assert is_sound(folder, tmp_path)
    (folder.path(tmp_path) / "adapter_model.safetensors").write_bytes(b"weights")
    assert not is_sound(folder, tmp_path)
    assert quarantine(folder, tmp_path).is_dir() and not folder.exists(tmp_path)
