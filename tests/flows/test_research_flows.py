"""The full grid on a tiny configuration: real sessions, a real loopback teacher server, a tiny random Llama student.

A first run computes every task exactly once (no task is even asked twice); a second run recomputes nothing and
sends no teacher request.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from flows.pipeline import full_pool
from flows.research import full_grid, rq1_knowledge_format
from kd_bundle import grid
from kd_bundle.evaluation.baselines import BASELINE_METHODS
from kd_bundle.grid import GridConfig, RQ1Grid, RQ2Grid, RQ3Grid
from kd_bundle.store import read_artifact

from .conftest import task_states

GRID = GridConfig(
    domains=("food",),
    rq1=RQ1Grid(formats=("raw", "patterns", "rules", "thoughts"), utilizations=("icl", "sft")),
    rq2=RQ2Grid(formats=("rules",), utilizations=("icl", "sft"), strategies=("random", "length", "diversity", "difficulty"),
                ratios=(0.5, 1.0), accumulate_domains=("food", "clothing"), aggregate_formats=("patterns", "rules"),
                pooled_ratios=(0.5, 1.0)),
    rq3=RQ3Grid(utilizations=("icl", "sft", "sft+icl"), train_formats=("rules",), prompt_formats=("raw", "thoughts")),
)


def _run(flow, **params):
    state = flow(**params, return_state=True)
    assert state.is_completed(), state
    return state.result(), task_states(state.state_details.flow_run_id)


def test_full_grid_computes_each_artifact_once_then_nothing(pipeline):
    teacher, cfg = pipeline
    cells = grid.expand(GRID)
    table, first = _run(full_grid, grid=GRID, pipeline=cfg)

    # The plan asks for every artifact once, so no task is Cached in the first run. One exception: a 2-step
    # adapter of the random tiny student can come out byte-identical for two samples that share their first
    # batches; the predictions over it then share a cache key, which is content-addressing doing its job.
    cached = {name for name, states in first.items() if "Cached" in states}
    assert cached <= {"student-predict"}, cached
    runs = Counter({name: len(states) for name, states in first.items()})
    assert runs["distill-rules-food"] == runs["distill-rules-clothing"] == runs["distill-thoughts-food"] == 1
    # SFT+ICL adapters train on prompts shaped like their test prompts: one per (train, prompt) format pair
    assert runs["train-adapter"] == len({(c.domain if len(c.source_domains) == 1 else None, c.source_domains,
                                          c.train_format, c.prompt_format if c.utilization == "sft+icl" else None,
                                          *full_pool(c.strategy, c.ratio)) for c in cells if c.train_format}), runs
    assert not [name for name in runs if name.startswith("sample-training") and name.endswith("-1.0")]
    configurations = {(c.domain, c.source_domains, c.train_format, c.prompt_format, *full_pool(c.strategy, c.ratio))
                      for c in cells}
    zero_shot = len({c.domain for c in cells})  # one zero-shot student row per domain, beside the references
    assert runs["student-predict"] == len(configurations) + zero_shot < len(cells)
    paid = teacher.attempts
    assert paid > 0

    results = read_artifact(table)
    # + the baselines and positional references, the teacher zero-shot and with rules, the zero-shot student
    assert results.height == len(cells) + len(BASELINE_METHODS) + 3
    assert set(results["rq"]) == {"baseline", "rq1", "rq2", "rq3"}
    students = results.filter(pl.col("method") == "student")
    assert set(students["strategy"]) >= {"all", "random", "length", "diversity", "difficulty", "multi-domain", "multi-format"}
    assert (students["n_sessions"] == 4).all()

    again, second = _run(full_grid, grid=GRID, pipeline=cfg)
    assert again == table
    assert {s for states in second.values() for s in states} == {"Cached"}, second
    assert teacher.attempts == paid  # not one teacher request more


def test_rq1_reuses_what_the_grid_computed(pipeline):
    _, cfg = pipeline
    _run(full_grid, grid=GRID, pipeline=cfg)
    _, states = _run(rq1_knowledge_format, domain="food", grid=GRID.rq1, pipeline=cfg)
    # the RQ1 flow's own summary rows are new; every knowledge artifact, adapter and prediction is reused
    new = {name for name, s in states.items() if "Completed" in s}
    assert new == {"collect-results"}, new


def test_multi_domain_adapter_is_shared_by_every_target(pipeline):
    _, cfg = pipeline
    two = GridConfig(domains=("food", "clothing"), rqs=("rq2",), rq2=RQ2Grid(
        formats=("raw",), utilizations=("sft",), strategies=("random",), ratios=(1.0,),
        accumulate_domains=("food", "clothing"), aggregate_formats=("raw",)))
    cells = grid.expand(two)
    table, states = _run(full_grid, grid=two, pipeline=cfg.model_copy(update={"teacher_rows": ()}))
    # food alone, clothing alone, and food + clothing: the two targets' multi-domain cells train on the same data
    assert len(states["train-adapter"]) == len(grid.cells_by_adapter(cells)) == 3, states
    multi = read_artifact(table).filter(pl.col("strategy") == "multi-domain")
    assert sorted(multi["domain"]) == ["clothing", "food"]
    # chosen on the two domains' validation sessions (conftest's SMOKE: 4 of them, every step), like one domain's
    assert multi["valid_steps"].to_list() == [[0, 1, 2]] * 2 and multi["valid_loss"].is_not_null().all(), multi


def test_sft_icl_training_prompts_match_the_test_prompts(pipeline):
    from flows.cells import Plan

    _, cfg = pipeline
    icl = cfg.icl
    matched = Plan(cfg).sft_config(("rules",), ("raw",))
    # the test prompt's format joins the training input, with the ICL counts
    assert matched.knowledge.formats == ("rules", "raw")
    assert (matched.knowledge.demonstrations, matched.knowledge.max_lines) == (icl.demonstrations, icl.max_lines) == (3, 20)
    assert Plan(cfg).sft_config(("thoughts",), ("thoughts",)).knowledge.formats == ("thoughts",)
    assert Plan(cfg).sft_config(("thoughts",), ("thoughts",)).reasoning
    # SFT alone, or the earlier behaviour on request: the SFTConfig's own knowledge (1 demonstration, 10 lines)
    for plan, prompts in ((Plan(cfg), ()), (Plan(cfg.model_copy(update={"sft_icl_prompts": "sft"})), ("raw",))):
        alone = plan.sft_config(("rules",), prompts)
        assert alone.knowledge.formats == ("rules",)
        assert (alone.knowledge.demonstrations, alone.knowledge.max_lines) == (1, 10)


def test_two_budgets_the_pool_the_teacher_and_the_adapters_each_have_their_size(pipeline):
    """The knowledge pool is all 12 training sessions; the teacher distils 3 of them, chosen for coverage; adapters
    train on a 6-session part of the pool and are validated. Every row says its sizes; difficulty sampling beyond
    the teacher's budget asks the teacher's first answer for every pool session (one request each, the rule loop's
    first: the distilled ones are answered from the request cache)."""
    teacher, cfg = pipeline
    cfg = cfg.model_copy(update={"teacher_sessions": 3, "sft_sessions": 6, "teacher_rows": ()})
    small = GridConfig(domains=("food",), rqs=("rq1", "rq2"),
                       rq1=RQ1Grid(formats=("raw", "rules", "thoughts"), utilizations=("icl", "sft")),
                       rq2=RQ2Grid(formats=("rules",), utilizations=("icl",), strategies=("difficulty",),
                                   ratios=(0.5,), accumulate_domains=(), aggregate_formats=()))
    table, states = _run(full_grid, grid=small, pipeline=cfg)
    results = read_artifact(table)
    students = results.filter(pl.col("method") == "student")
    rq1 = students.filter(pl.col("rq") == "rq1")
    assert (rq1["train_sessions"] == 12).all(), rq1.select("knowledge_format", "utilization", "train_sessions")
    distilled = rq1.filter(pl.col("knowledge_format").is_in(["rules", "thoughts"]))
    assert (distilled["teacher_sessions"] == 3).all() and (
        rq1.filter(pl.col("knowledge_format") == "raw")["teacher_sessions"] == 0).all()
    sft = rq1.filter(pl.col("utilization") == "sft")
    raw_sft = sft.filter(pl.col("knowledge_format") == "raw")
    assert raw_sft["train_examples"].to_list() == [6] and (sft["train_steps"] == 2).all()
    # validated on the valid split (conftest's SMOKE: 4 sessions, every step) by decoding them: every adapter has
    # its precision curve and the kept step's precision; the reasoning adapter has no loss (no validation thought)
    assert raw_sft["valid_steps"].to_list() == [[0, 1, 2]] and raw_sft["best_step"].to_list()[0] in (0, 1, 2)
    assert (sft["valid_precisions"].list.len() == 3).all() and sft["valid_strict_precision"].is_not_null().all()
    thoughts_sft = sft.filter(pl.col("knowledge_format") == "thoughts")
    assert thoughts_sft["valid_steps"].to_list() == [[0, 1, 2]] and thoughts_sft["valid_losses"].to_list() == [[]]
    assert thoughts_sft["valid_loss"].is_null().all() and thoughts_sft["train_examples"].to_list()[0] <= 3
    assert states["sample-teacher-diversity-3"] == ["Completed"] and states["first-answers-food"] == ["Completed"]
    rq2 = students.filter(pl.col("rq") == "rq2")
    assert rq2.height == 1 and rq2["train_sessions"].to_list() == [6]  # half of the pool, ranked by the teacher
