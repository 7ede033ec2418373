"""A flow's results rows name the adapter and the knowledge pools their predictions used, and `python -m kd_bundle
generate --student best:<the published table>` applies the best validated row to sessions the run never saw."""

from __future__ import annotations

import polars as pl

from flows.research import rq1_knowledge_format
from kd_bundle.__main__ import main
from kd_bundle.config import DataConfig, settings
from kd_bundle.data.sessions import load_sessions
from kd_bundle.evaluation.predictions import read_predictions_jsonl
from kd_bundle.evaluation.results import provenance_pools
from kd_bundle.grid import RQ1Grid
from kd_bundle.store import ArtifactRef, read_artifact


def test_rows_record_adapter_and_pools_and_the_best_row_answers_unseen_sessions(pipeline, tmp_path, capsys):
    _, cfg = pipeline
    state = rq1_knowledge_format(domain="food", grid=RQ1Grid(formats=("raw", "patterns"), utilizations=("icl", "sft")),
                                 pipeline=cfg.model_copy(update={"teacher_rows": ()}), return_state=True)
    assert state.is_completed(), state
    table = read_artifact(state.result())
    cells = {(r["knowledge_format"], r["utilization"]): r
             for r in table.filter(pl.col("method") == "student").iter_rows(named=True)}
    kinds = {cell: [kind for kind, _ in provenance_pools(r["knowledge_sha256"])] for cell, r in cells.items()}
    assert kinds == {("none", "none"): [], ("raw", "icl"): ["sessions"], ("raw", "sft"): [],
                     ("patterns", "icl"): ["patterns"], ("patterns", "sft"): ["patterns"]}  # SFT: trained with them
    for cell, row in cells.items():
        assert bool(row["adapter_sha256"]) == (cell[1] == "sft"), cell
        if row["adapter_sha256"]:
            assert ArtifactRef(kind="adapter", sha256=row["adapter_sha256"], rows=0).path().is_dir()
        for kind, sha256 in provenance_pools(row["knowledge_sha256"]):
            assert ArtifactRef(kind=kind, sha256=sha256, rows=0).exists(), (cell, kind)
    references = table.filter(pl.col("method") != "student")
    assert (references["adapter_sha256"] == "").all() and (references["knowledge_sha256"] == "").all()

    # sessions the run never saw: food test sessions beyond its 4, without their bundles
    seen = {sid for ids in table["session_ids"].to_list() for sid in ids}
    food = load_sessions(DataConfig(domain="food"), settings().data_root)
    unseen = food.filter((pl.col("split") == "test") & ~pl.col("session_id").is_in(list(seen))).head(3)
    items = tmp_path / "new.csv"
    (unseen.select("session_id", "item_ids", "titles").explode("item_ids", "titles")
     .select("session_id", position=pl.int_range(1, pl.len() + 1).over("session_id"), item_id="item_ids",
             title="titles").write_csv(items))
    # only the patterns rows: the chosen adapter's test prompt retrieves from the row's stored patterns pool
    published = pl.read_parquet(settings().results_dir / "rq1-food.parquet")
    patterns = tmp_path / "patterns-rows.parquet"
    published.filter(pl.col("knowledge_format") == "patterns").write_parquet(patterns)
    out = tmp_path / "bundles.jsonl"
    assert main(["generate", "--student", f"best:{patterns}", "--sessions", str(items), "--out", str(out),
                 "--retrieval", "tfidf"]) == 0  # the run's retrieval (PipelineConfig.retrieval, conftest)
    err = capsys.readouterr().err
    assert "best of 1 validated rows" in err and "[food rq1 student patterns sft all 1.0]" in err, err
    assert "retrieving ['patterns'] for 3 sessions" in err
    predicted = read_predictions_jsonl(out)
    assert sorted(predicted["session_id"]) == sorted(unseen["session_id"])
    assert (predicted["prompt_tokens"] > 0).all()
