"""The study's analyses on small hand-built results tables whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kd_bundle.report import analysis, bootstrap
from kd_bundle.evaluation.metrics import score_predictions, session_lists, session_scores
from kd_bundle.evaluation.results import combine_results, result_row


def _row(value: float, n: int = 10, **labels) -> pl.DataFrame:
    """A results row whose every metric is `value`: n sessions with per-session values equal to it."""
    lists = _lists([value] * n)
    fields = dict(domain="food", rq="rq1", method="student", knowledge_format="rules", utilization="icl")
    return result_row(**{**fields, **labels}, **_scores(value, n), **lists)


def _scores(value: float, n: int) -> dict:
    return dict(precision=value, recall=value, coverage=value, strict_precision=value, strict_recall=value,
                strict_coverage=value, n_sessions=n, n_scored=n, n_failed=0)


def _lists(values: list[float], ids: list[int] | None = None) -> dict:
    """Per-session lists of a row where every session is scored, has one hit and strict values equal `values`."""
    n = len(values)
    return dict(session_ids=ids or list(range(1, n + 1)), session_scored=[True] * n, session_precision=values,
                session_recall=values, session_hits=[1] * n, session_coverage_sum=values,
                session_strict_recall=values, session_strict_coverage=values)


def test_only_utilization_varies_gets_all_the_impact():
    rows = [_row(v, utilization=u) for u, v in (("icl", 0.2), ("sft", 0.5), ("sft+icl", 0.4))]
    impact = analysis.factor_impact(combine_results(rows), "strict_precision")
    food = impact.filter(pl.col("domain") == "food").row(0, named=True)
    assert (food["utilization_share"], food["format_share"], food["quantity_share"]) == (100.0, 0.0, 0.0)
    assert food["r2"] == pytest.approx(1.0) and food["n_configurations"] == 3


def test_additive_two_factor_grid_splits_by_sums_of_squares():
    # y = format effect (+-0.1) + utilization effect (+-0.2): SS 4 * 0.01 = 0.04 and 4 * 0.04 = 0.16 -> 20% / 80%
    rows = [_row(0.5 + f + u, knowledge_format=fmt, utilization=util)
            for fmt, f in (("rules", 0.1), ("thoughts", -0.1)) for util, u in (("icl", 0.2), ("sft", -0.2))]
    row = analysis.factor_impact(combine_results(rows), "precision").row(0, named=True)
    assert row["format_share"] == pytest.approx(20.0) and row["utilization_share"] == pytest.approx(80.0)
    assert row["quantity_share"] == pytest.approx(0.0)


def test_overall_impact_ignores_domain_differences():
    rows = [_row(v + shift, domain=d, utilization=u) for d, shift in (("food", 0.0), ("clothing", 0.3))
            for u, v in (("icl", 0.2), ("sft", 0.5))]
    overall = analysis.factor_impact(combine_results(rows), "precision").filter(pl.col("domain") == "overall")
    assert overall["utilization_share"].to_list() == [pytest.approx(100.0)]


def test_alignment_gain_of_a_known_pair():
    rows = [_row(0.4, rq="rq3", utilization="sft", knowledge_format="rules"),
            _row(0.5, rq="rq3", utilization="sft+icl", knowledge_format="rules"),  # aligned: rules | rules
            _row(0.3, rq="rq3", utilization="sft+icl", knowledge_format="rules|thoughts")]
    gains = analysis.alignment_gains(combine_results(rows), "strict_precision")
    by_prompt = {r["prompt_format"]: r for r in gains.iter_rows(named=True)}
    assert by_prompt["rules"]["aligned"] and by_prompt["rules"]["gain"] == pytest.approx(0.25)
    assert not by_prompt["thoughts"]["aligned"] and by_prompt["thoughts"]["gain"] == pytest.approx(-0.25)
    assert by_prompt["thoughts"]["train_format"] == "rules" and by_prompt["thoughts"]["sft"] == pytest.approx(0.4)


def test_bootstrap_intervals_cover_the_true_mean_at_about_the_stated_rate():
    rng = np.random.default_rng(7)
    true_mean, trials, covered = 0.3, 300, 0  # Beta(3, 7) has mean 0.3
    for trial in range(trials):
        values = rng.beta(3, 7, size=60)
        arrays = bootstrap.session_arrays([_lists(values.tolist())])
        out = bootstrap.interval(arrays[1], n_boot=400, seed=trial)
        covered += out["strict_precision_lo"] <= true_mean <= out["strict_precision_hi"]
    # the percentile bootstrap runs a little narrow at n = 60; 300 trials put the binomial sd near 1.3%
    assert 0.89 <= covered / trials <= 0.99, covered / trials


def test_point_estimates_equal_the_metrics_of_real_scores():
    items = ["a", "b", "c", "d", "p", "q", "x", "y", "z"]
    truth = pl.DataFrame({"session_id": [1, 2, 3, 4], "item_ids": [items] * 4,
                          "bundles": [[["a", "b"], ["c", "d"]], [["a", "b", "c"]], [["x", "y"]], [["p", "q"]]]})
    predictions = pl.DataFrame({"session_id": [1, 2, 3, 4], "bundles": [[["a", "b"], ["b", "c"]], [["a", "b"]], None,
                                                                         [["p", "z"]]]},
                               schema={"session_id": pl.Int64, "bundles": pl.List(pl.List(pl.String))})
    per_session = session_scores(predictions, truth)
    out = bootstrap.interval(bootstrap.session_arrays([session_lists(per_session)])[1], n_boot=50)
    expected = score_predictions(predictions, truth)
    assert {m: out[m] for m in bootstrap.METRIC_NAMES} == pytest.approx({m: expected[m] for m in bootstrap.METRIC_NAMES})


def test_paired_bootstrap_marks_a_consistent_gain_that_unpaired_intervals_miss():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, size=40)  # sessions differ a lot; the better row is better on every one by 0.05
    zero_shot = result_row(domain="food", rq="baseline", method="student", **_scores(base.mean(), 40),
                           **_lists(base.tolist()))
    better = result_row(domain="food", rq="rq1", method="student", knowledge_format="rules", utilization="icl",
                        **_scores(base.mean() + 0.05, 40), **_lists((base + 0.05).tolist()))
    same = result_row(domain="food", rq="rq1", method="student", knowledge_format="patterns", utilization="icl",
                      **_scores(base.mean(), 40), **_lists(base.tolist()))
    table = analysis.confidence(combine_results([zero_shot, better, same]), n_boot=500)
    rows = {r["knowledge_format"]: r for r in table.iter_rows(named=True)}
    assert rows["rules"]["strict_precision_lo"] < rows["none"]["strict_precision_hi"], "unpaired intervals overlap"
    assert rows["rules"]["vs_zero_shot_strict_precision"] == "+"
    assert rows["patterns"]["vs_zero_shot_strict_precision"] == "="
    assert rows["none"]["vs_zero_shot_strict_precision"] == "", "the zero-shot row is not compared with itself"
    assert rows["rules"]["vs_teacher_strict_precision"] == "", "no teacher row: nothing to compare"


def test_seeds_are_pooled_per_session_and_old_rows_get_no_interval():
    a = _row(0.2, sampling_seed=0).with_columns(pl.lit([0.2] * 10).alias("session_strict_recall"))
    b = _row(0.4, sampling_seed=1).with_columns(pl.lit([0.4] * 10).alias("session_strict_recall"))
    old = _row(0.7, knowledge_format="thoughts").with_columns(pl.lit(None, dtype=pl.List(pl.Int64)).alias("session_ids"))
    table = analysis.confidence(combine_results([a, b, old]), n_boot=100)
    pooled = table.filter(pl.col("knowledge_format") == "rules").row(0, named=True)
    assert pooled["n_rows"] == 2 and pooled["strict_recall"] == pytest.approx(0.3)
    assert pooled["n_sessions"] == 20
    legacy = table.filter(pl.col("knowledge_format") == "thoughts").row(0, named=True)
    assert legacy["strict_recall"] == pytest.approx(0.7) and legacy["strict_recall_lo"] is None


def test_knowledge_quantity_and_summary_read_the_quantity_columns():
    rows = [_row(0.3, rq="rq2", strategy="random", ratio=r, train_sessions=s, rule_count=3 * s, knowledge_tokens=40 * s,
                 knowledge_failed=1, knowledge_truncated=0, feedback_rounds=s, extraction_tokens=500 * s)
            for r, s in ((0.5, 5), (1.0, 10))]
    quantity = analysis.knowledge_quantity(combine_results(rows))
    assert quantity.select("ratio", "train_sessions", "rule_count").rows() == [(0.5, 5, 15), (1.0, 10, 30)]
    summary = analysis.knowledge_summary(combine_results(rows)).row(0, named=True)
    assert (summary["knowledge_format"], summary["items"], summary["train_sessions"]) == ("rules", 30, 10)
    assert (summary["extraction_tokens"], summary["feedback_rounds"], summary["knowledge_failed"]) == (5000, 10, 1)


def test_cost_table_per_thousand_sessions_and_break_even():
    teacher = result_row(domain="food", rq="baseline", method="teacher", teacher_tokens=2000, teacher_cost=0.5,
                         wall_seconds=20.0, **_scores(0.5, 10))
    student = result_row(domain="food", rq="rq1", method="student", knowledge_format="rules", utilization="sft",
                         inference_prompt_tokens=1500, inference_new_tokens=500, wall_seconds=5.0,
                         train_seconds=30.0, train_tokens=9000, extraction_tokens=10_000, extraction_cost=1.0,
                         extraction_seconds=60.0, **_scores(0.4, 10))
    table = {r["method"]: r for r in analysis.cost_table(combine_results([teacher, student])).iter_rows(named=True)}
    assert (table["teacher"]["tokens_per_1k"], table["teacher"]["money_per_1k"]) == (200_000, 50.0)
    s = table["student"]
    assert (s["tokens_per_1k"], s["seconds_per_1k"], s["money_per_1k"]) == (200_000, 500.0, 0.0)
    assert (s["one_off_tokens"], s["one_off_seconds"]) == (10_000, 90.0)
    # 10,000 extraction tokens / 200 teacher tokens saved per session; 90 s / (2 - 0.5) s saved per session
    assert (s["break_even_tokens"], s["break_even_seconds"]) == (50, 60)


def test_a_row_that_does_not_beat_the_best_positional_reference_is_marked():
    rng = np.random.default_rng(5)
    base = rng.uniform(0, 0.6, size=40)

    def row(method: str, values: np.ndarray, **labels) -> pl.DataFrame:
        return result_row(domain="food", method=method, **{"rq": "baseline", **labels},
                          **_scores(float(values.mean()), 40), **_lists(values.tolist()))

    table = analysis.confidence(combine_results([
        row("first-two", base), row("whole-session", base * 0.5), row("student", base),  # zero-shot: the habit
        row("student", base + 0.1, rq="rq1", knowledge_format="rules", utilization="icl"),
        row("student", base - 0.01, rq="rq1", knowledge_format="raw", utilization="icl"),
    ]), n_boot=400)
    rows = {(r["method"], r["knowledge_format"]): r for r in table.iter_rows(named=True)}
    assert rows[("student", "rules")]["positional_strict_precision"] == "first-two", "the best one is the reference"
    assert rows[("student", "rules")]["vs_positional_strict_precision"] == "+"
    assert rows[("student", "rules")]["beats_positional"] is True
    assert rows[("student", "raw")]["vs_positional_strict_precision"] == "-"
    assert rows[("student", "raw")]["beats_positional"] is False
    assert rows[("student", "none")]["beats_positional"] is False, "the zero-shot student only repeats position"
    assert rows[("first-two", "none")]["vs_positional_strict_precision"] == "", "not compared with itself"
    assert rows[("first-two", "none")]["beats_positional"] is None

    from kd_bundle.report.document import markdown_report

    report = markdown_report(combine_results([row("first-two", base), row(
        "student", base - 0.01, rq="rq1", knowledge_format="raw", utilization="icl")]), n_boot=200)
    assert "student (no better than position)" in report
