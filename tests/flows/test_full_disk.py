"""`python -m flows.baselines` on a store that fills up: one line naming the store and its free space, exit 2, no
partial artifact and no cache record pointing at one; with room again the rerun finishes with the table a run on a
roomy store gives."""

from __future__ import annotations

import polars as pl

from flows.baselines import main
from kd_bundle.store_admin import stored_artifacts, verify
from kd_bundle.store_records import record_hashes
from tests.tmpfs import remount, tmpfs


def _store_files(store):
    return sorted(p for p in store.rglob("*") if p.is_file() and ".logs" not in p.parts)


def test_full_store_fails_in_one_line_then_the_rerun_finishes(tmp_path, monkeypatch, capsys):
    # food's sessions (~150 kB) fit in 300 kB; its patterns (~400 kB) do not
    with tmpfs(tmp_path / "store", size="300k") as store:
        monkeypatch.setenv("KD_STORE", str(store))
        argv = ["--domain", "food", "--max-test-sessions", "27"]
        assert main_cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        lines = [line for line in err if "error:" in line]
        assert len(lines) == 1 and str(store) in lines[0] and "No space left on device" in lines[0], err
        assert " free of " in lines[0] and "nothing half-written" in lines[0]
        assert not any(p.name.startswith(".tmp-") for p in store.rglob("*")), "no partial file stays behind"
        written = _store_files(store)
        recorded = set().union(*(record_hashes(p)[0] for p in (tmp_path / "prefect-results").iterdir()))
        assert recorded, "the stages that fitted left cache records"
        assert recorded <= {a.sha256 for a in stored_artifacts(store)} and verify(store).bad == (), \
            "no cache record points at a missing or partial artifact"

        remount(store, "size=64m")
        assert main_cli(argv) == 0
        healed = pl.read_parquet(tmp_path / "published" / "baselines.parquet")
        assert written and all(p.exists() for p in written), "what the first run wrote whole is kept and reused"

    monkeypatch.setenv("KD_STORE", str(tmp_path / "roomy"))
    assert main_cli(argv) == 0
    roomy = pl.read_parquet(tmp_path / "published" / "baselines.parquet")
    assert healed.equals(roomy)


def main_cli(argv):
    from kd_bundle.cli_errors import run_cli

    return run_cli("python -m flows.baselines", lambda: main(argv))
