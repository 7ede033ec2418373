"""The research grid: cell counts, uniqueness, labels and the grouping that lets a flow compute each artifact once."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from kd_bundle.config import DOMAINS
from kd_bundle.evaluation.results import RESULT_SCHEMA, result_row
from kd_bundle.grid import (
    DEFAULT_RATIOS,
    MULTI_DOMAIN,
    MULTI_FORMAT,
    Cell,
    GridConfig,
    KnowledgeKey,
    RQ1Grid,
    RQ2Grid,
    RQ3Grid,
    cells_by_adapter,
    cells_by_knowledge,
    expand,
    knowledge_keys,
)


def test_default_ratios_are_point_one_to_one():
    assert DEFAULT_RATIOS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_default_grid_counts():
    cells = expand(GridConfig())
    per_domain = Counter((c.domain, c.rq) for c in cells)
    for domain in DOMAINS:
        assert per_domain[(domain, "rq1")] == 4 * 2  # formats x {icl, sft}
        # every format x {icl, sft} x 4 strategies x 10 ratios, + multi-domain per format and utilization,
        # + multi-format per utilization
        assert per_domain[(domain, "rq2")] == 4 * 2 * 4 * 10 + 4 * 2 + 2
        assert per_domain[(domain, "rq3")] == 4 + 4 + 4 * 4  # icl, sft, sft+icl with independent formats
    assert len(cells) == 3 * (8 + 330 + 24)


def test_cells_are_unique_and_names_too():
    cells = expand(GridConfig())
    assert len(set(cells)) == len(cells)
    assert len({c.name for c in cells}) == len(cells)


def test_short_ratio_list_and_one_domain():
    cfg = GridConfig(domains=("food",), rqs=("rq2",), rq2=RQ2Grid(ratios=(0.5, 0.1), strategies=("random",)))
    cells = expand(cfg)
    sampled = [c for c in cells if c.result_fields()["strategy"] == "random"]
    assert sorted({c.ratio for c in sampled}) == [0.1, 0.5]
    assert len(sampled) == 4 * 2 * 2  # formats x ratios x utilizations
    assert {c.domain for c in cells} == {"food"}


def test_multi_domain_and_multi_format_cells():
    cells = expand(GridConfig(domains=("food",), rqs=("rq2",)))
    multi_domain = [c for c in cells if c.result_fields()["strategy"] == MULTI_DOMAIN]
    multi_format = [c for c in cells if c.result_fields()["strategy"] == MULTI_FORMAT]
    assert {c.utilization for c in multi_domain} == {"icl", "sft"}
    assert all(c.source_domains == DOMAINS and c.domain == "food" for c in multi_domain)
    assert {c.knowledge_format for c in multi_format} == {"patterns+rules+thoughts"}
    # multi-format cells read one full-pool artifact per format
    keys = knowledge_keys(multi_format[0])
    assert [k.knowledge_format for k in keys] == ["patterns", "rules", "thoughts"]
    assert {(k.strategy, k.ratio) for k in keys} == {("all", 1.0)}
    # too few domains or formats: no such cells
    lean = GridConfig(rqs=("rq2",), rq2=RQ2Grid(accumulate_domains=("food",), aggregate_formats=("rules",)))
    assert {c.result_fields()["strategy"] for c in expand(lean)} == {"random", "length", "diversity", "difficulty"}


def test_pooled_cells_at_every_ratio_sample_each_pool_alike():
    cfg = GridConfig(domains=("food",), rqs=("rq2",), rq2=RQ2Grid(
        formats=("raw",), strategies=("random",), ratios=(0.5, 1.0), pooled_ratios=(0.5, 1.0), pooled_strategy="length"))
    cells = expand(cfg)
    multi_domain = [c for c in cells if c.result_fields()["strategy"] == MULTI_DOMAIN]
    multi_format = [c for c in cells if c.result_fields()["strategy"] == MULTI_FORMAT]
    assert sorted((c.ratio, c.strategy) for c in multi_domain) == [(0.5, "length")] * 2 + [(1.0, "all")] * 2
    assert sorted((c.ratio, c.strategy) for c in multi_format) == [(0.5, "length")] * 2 + [(1.0, "all")] * 2
    half = next(c for c in multi_domain if c.ratio == 0.5)
    assert {(k.domain, k.strategy, k.ratio) for k in knowledge_keys(half)} == {(d, "length", 0.5) for d in DOMAINS}
    assert len({c.name for c in cells}) == len(cells)


def test_rq3_chooses_stage_formats_independently():
    cells = expand(GridConfig(domains=("clothing",), rqs=("rq3",)))
    both = [c for c in cells if c.utilization == "sft+icl"]
    assert {(c.train_format, c.prompt_format) for c in both} == {
        (t, p) for t in ("raw", "patterns", "rules", "thoughts") for p in ("raw", "patterns", "rules", "thoughts")
    }
    mixed = next(c for c in both if (c.train_format, c.prompt_format) == ("rules", "thoughts"))
    assert mixed.knowledge_format == "rules|thoughts"
    assert [k.knowledge_format for k in knowledge_keys(mixed)] == ["rules", "thoughts"]
    assert all(c.train_format is None for c in cells if c.utilization == "icl")
    assert all(c.prompt_format is None for c in cells if c.utilization == "sft")


def test_cells_by_knowledge_computes_each_artifact_once():
    cells = expand(GridConfig())
    groups = cells_by_knowledge(cells)
    # per domain: 4 formats on the full pool + 4 formats x 4 strategies x 9 ratios below 1.0
    assert len(groups) == 3 * (4 + 4 * 4 * 9)
    assert all(isinstance(k, KnowledgeKey) and v for k, v in groups.items())
    full_rules = groups[KnowledgeKey(domain="food", knowledge_format="rules", strategy="all", ratio=1.0)]
    # every cell that reads food's full rules pool, from all three RQs and from other target domains
    assert {c.rq for c in full_rules} == {"rq1", "rq2", "rq3"}
    assert {c.domain for c in full_rules} == set(DOMAINS), "multi-domain cells of other targets read it too"
    assert all(c.ratio == 1.0 for c in full_rules)
    # every key a cell needs is in the groups, and each cell appears under each of its keys exactly once
    for cell in cells:
        for key in knowledge_keys(cell):
            assert groups[key].count(cell) == 1


def test_cells_by_adapter_shares_adapters():
    cells = expand(GridConfig())
    groups = cells_by_adapter(cells)
    # per domain: 4 full-pool formats + 4 formats x 4 strategies x 9 ratios + 1 multi-format + RQ3's 4 x 4
    # SFT+ICL pairs (each trained on prompts shaped like its own); plus one multi-domain adapter per format,
    # shared by the three targets
    assert len(groups) == 3 * (4 + 4 * 36 + 1 + 16) + 4
    assert all(c.train_format is not None for group in groups.values() for c in group)
    multi_domain = [g for (keys, _), g in groups.items() if len({k.domain for k in keys}) == 3]
    assert len(multi_domain) == 4 and all({c.domain for c in g} == set(DOMAINS) for g in multi_domain)
    # sft_icl_prompts="sft": an SFT+ICL cell reuses its SFT cell's adapter
    shared = cells_by_adapter(cells, match_prompts=False)
    assert len(shared) == 3 * (4 + 4 * 36 + 1) + 4
    sft_icl = [g for g in shared.values() if any(c.utilization == "sft+icl" for c in g)]
    assert sft_icl and all(any(c.utilization == "sft" for c in g) for g in sft_icl)


def test_result_fields_fill_a_results_row():
    for cell in expand(GridConfig(domains=("food",))):
        row = result_row(**cell.result_fields(), method="student", model="m", precision=0.5, recall=0.5,
                         coverage=0.5, strict_precision=0.5, strict_recall=0.5, strict_coverage=0.5,
                         n_sessions=1, n_scored=1, n_failed=0)
        assert row.schema == RESULT_SCHEMA


def test_domain_is_a_dropdown_in_the_form_and_a_label_in_the_grid():
    from flows.research import rq1_knowledge_format

    form = rq1_knowledge_format.parameters.model_dump()
    assert form["properties"]["domain"]["enum"] == list(DOMAINS)
    assert "your own data" in form["properties"]["data_dir"]["description"].lower()  # a form field beside it
    assert GridConfig(domains=("my-shop",)).domains == ("my-shop",)  # a label: your data folder's
    assert Cell.model_json_schema()["properties"]["domain"]["pattern"]


def test_grid_is_pure_and_json_round_trips():
    cfg = GridConfig(domains=("food", "clothing"), rq2=RQ2Grid(ratios=(0.2, 1.0)))
    assert expand(cfg) == expand(GridConfig.model_validate_json(cfg.model_dump_json()))
    cell = expand(cfg)[0]
    assert Cell.model_validate_json(cell.model_dump_json()) == cell
    assert hash(cell) == hash(Cell.model_validate_json(cell.model_dump_json()))


@pytest.mark.parametrize(
    "build",
    [
        lambda: RQ2Grid(ratios=(0.0, 0.5)),
        lambda: RQ2Grid(ratios=(0.5, 1.5)),
        lambda: RQ2Grid(ratios=()),
        lambda: RQ2Grid(ratios=(0.5, 0.5)),
        lambda: RQ1Grid(formats=("rules", "rules")),
        lambda: RQ3Grid(utilizations=("icl", "ft")),
        lambda: GridConfig(domains=("Books & more",)),
        lambda: Cell(domain="food", rq="rq1", knowledge_format="rules", train_format="rules", utilization="icl",
                     source_domains=("food",)),
        lambda: Cell(domain="food", rq="rq1", knowledge_format="x", prompt_format="rules+memes", utilization="icl",
                     source_domains=("food",)),
        lambda: Cell(domain="food", rq="rq2", knowledge_format="rules", prompt_format="rules", utilization="icl",
                     strategy="all", ratio=0.5, source_domains=("food",)),
    ],
)
def test_invalid_configs_are_rejected(build):
    with pytest.raises(ValidationError):
        build()
