"""A flipped bit in a file of an adapter folder (a flaky mount, a half-synced volume): the next run quarantines the
folder with one line naming the stage that made it, retrains it, and prints the table the first run printed."""

from __future__ import annotations

import polars as pl

from flows.research import rq1_knowledge_format
from kd_bundle.evaluation.results import TIMING_COLUMNS
from kd_bundle.grid import RQ1Grid
from kd_bundle.store import read_artifact

from .conftest import task_states

SFT_ONLY = RQ1Grid(formats=("raw",), utilizations=("sft",))


def _run(cfg):
    state = rq1_knowledge_format(domain="food", grid=SFT_ONLY, pipeline=cfg, return_state=True)
    assert state.is_completed(), state
    return read_artifact(state.result()), task_states(state.state_details.flow_run_id)


def test_bit_flipped_adapter_file_is_quarantined_and_retrained(pipeline, isolated_store, caplog):
    _, cfg = pipeline
    table, _ = _run(cfg)
    adapters = sorted((isolated_store / "store" / "adapter").iterdir())
    adapters = [a for a in adapters if a.is_dir() and not a.name.startswith(".")]
    assert len(adapters) == 1, adapters
    weights = next(adapters[0].rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: the file still loads, with a different weight
    weights.write_bytes(bytes(data))

    with caplog.at_level("WARNING", logger="kd_bundle.store"):
        again, states = _run(cfg)
    lines = [r.getMessage() for r in caplog.records if "does not match its hash" in r.getMessage()]
    assert len(lines) == 1 and adapters[0].name in lines[0] and "stage train_adapter" in lines[0], lines
    assert (isolated_store / "store" / ".quarantine" / "adapter" / adapters[0].name).is_dir()
    assert "Completed" in states["train-adapter"], states
    assert states["load-sessions-food"] == ["Cached"]
    clocks = [*TIMING_COLUMNS, "predictions_sha256"]
    sft = pl.col("utilization") == "sft"
    assert again.filter(sft).drop(clocks).equals(table.filter(sft).drop(clocks))
