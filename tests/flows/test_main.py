"""The main job's RQ3 (`python -m flows.main --rq rq3`) on the tiny pipeline: every utilization beside the references."""

from __future__ import annotations

import polars as pl

from flows.main import DEMO_RQ3_GRID, main_flow
from kd_bundle.store import read_artifact


def test_rq3_table_has_icl_sft_and_sft_icl_beside_baselines_and_teacher(pipeline):
    _, cfg = pipeline
    baselines, cells = main_flow(domain="food", rq="rq3", pipeline=cfg.model_copy(update={"teacher_rows": ("none",)}))
    assert set(read_artifact(baselines)["domain"]) == {"electronic", "clothing", "food"}

    table = read_artifact(cells)
    references = table.filter(pl.col("rq") == "baseline")
    assert references["method"].to_list() == ["pattern-baseline", "category-baseline", "first-two", "last-two",
                                              "whole-session", "teacher", "student"]
    zero_shot = references.filter(pl.col("method") == "student").row(0, named=True)
    assert (zero_shot["knowledge_format"], zero_shot["utilization"]) == ("none", "none")
    # The grammar holds even a random tiny student to the answer format: every student answer is scored.
    every_student = table.filter(pl.col("method") == "student")
    assert (every_student["n_failed"] == 0).all() and (every_student["n_scored"] == every_student["n_sessions"]).all()
    students = table.filter(pl.col("method") == "student", pl.col("rq") != "baseline")
    assert students["utilization"].value_counts().sort("utilization").rows() == [("icl", 2), ("sft", 2), ("sft+icl", 4)]
    crossed = students.filter(pl.col("utilization") == "sft+icl")["knowledge_format"].to_list()
    assert sorted(crossed) == sorted(["raw", "rules", "raw|rules", "rules|raw"])
    assert len(DEMO_RQ3_GRID.train_formats) * len(DEMO_RQ3_GRID.prompt_formats) == 4
    assert (table["n_sessions"] == 4).all()
