"""Report: markdown tables and PNG plots from a synthetic results table built with the grid's own labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.evaluation.results import combine_results, result_row
from kd_bundle.grid import KNOWLEDGE_FORMATS, GridConfig, RQ2Grid, expand
from kd_bundle.report.document import markdown_tables, plot_results, read_results

REPO = Path(__file__).resolve().parents[3]
DOMAINS = ("food", "clothing")
RATIOS = (0.1, 0.5, 1.0)
STRATEGY_BONUS = {"length": 0.01, "diversity": 0.02, "difficulty": 0.03}
CLOTHING, FOOD = slice(2, 5), slice(6, 9)  # P, R, C of an AICL-only table (domains in config.DOMAINS order, n after C)


def _metrics(precision: float, recall: float, coverage: float, **kw) -> dict:
    return dict(precision=precision, recall=recall, coverage=coverage, strict_precision=precision / 2,
                strict_recall=recall / 2, strict_coverage=coverage / 2, n_sessions=10, n_scored=9, n_failed=1, **kw)


def _student_precision(fields: dict) -> float:
    """Distinct, readable numbers: format adds 0.01 steps, sft 0.1, ratio 0.2 x ratio, clothing 0.05, and below
    ratio 1 the strategy adds 0.01 (length) to 0.03 (difficulty)."""
    fmt = fields["knowledge_format"].split("|")[0].split("+")[0]
    strategy = STRATEGY_BONUS.get(fields["strategy"], 0.0) if fields["ratio"] < 1 else 0.0
    return round(0.2 + 0.01 * KNOWLEDGE_FORMATS.index(fmt) + 0.1 * ("sft" in fields["utilization"])
                 + 0.2 * fields["ratio"] + 0.05 * (fields["domain"] == "clothing") + strategy, 4)


@pytest.fixture(scope="module")
def results() -> pl.DataFrame:
    return synthetic_results()


def synthetic_results() -> pl.DataFrame:
    """Every cell of a two-domain grid (ratios 0.1, 0.5, 1.0) as a student row, plus a baseline and the teacher."""
    cells = expand(GridConfig(domains=DOMAINS, rq2=RQ2Grid(ratios=RATIOS, formats=("rules",))))
    rows = []
    for cell in cells:
        fields = cell.result_fields()
        p = _student_precision(fields)
        rows.append(result_row(**fields, method="student", model="tiny-student", **_metrics(p, p + 0.3, p + 0.1)))
    for domain in DOMAINS:
        rows.append(result_row(domain=domain, rq="baseline", method="pattern-baseline", **_metrics(0.21, 0.31, 0.41)))
        rows.append(result_row(domain=domain, rq="baseline", method="teacher", model="gpt-3.5-turbo",
                               knowledge_format="rules", utilization="icl", **_metrics(0.55, 0.75, 0.65)))
    return combine_results(rows)


def _table(markdown: str, title: str) -> list[list[str]]:
    """The rows (header first, separator dropped) of the table under a heading that starts with `title`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip().startswith(title))
    table = []
    for line in lines[start + 1:]:  # notes may stand between the heading and its table
        if not line.startswith("|"):
            if table:
                break
            continue
        table.append([c.strip() for c in line.strip("|").split("|")])
    return [table[0]] + table[2:]


def test_rq1_table_format_by_utilization(results):
    table = _table(markdown_tables(results, strict=False), "RQ1")
    header, rows = table[0], table[1:]
    # domains in the study order (config.DOMAINS: electronic, clothing, food), sessions scored after the metrics
    assert header == ["Utilization", "Format", "clothing P", "clothing R", "clothing C", "clothing n",
                      "food P", "food R", "food C", "food n"]
    students = [r for r in rows if r[0] != "reference"]
    assert [(r[0], r[1]) for r in students] == [(u, f) for u in ("icl", "sft") for f in KNOWLEDGE_FORMATS]
    sft_rules = next(r for r in students if r[:2] == ["sft", "rules"])
    assert sft_rules[FOOD] == ["0.520", "0.820", "0.620"]  # 0.2 + 0.02 (rules) + 0.1 (sft) + 0.2 * ratio 1
    assert sft_rules[CLOTHING] == ["0.570", "0.870", "0.670"]
    assert sft_rules[9] == "9/10"
    assert next(r for r in students if r[:2] == ["sft", "thoughts"])[6] == "**0.530**", "best student in bold"
    references = [r for r in rows if r[0] == "reference"]
    assert [r[1] for r in references] == ["pattern-baseline", "teacher (gpt-3.5-turbo), rules"]
    assert references[1][FOOD] == ["0.550", "0.750", "0.650"]


def test_rq2_tables_metric_vs_ratio(results):
    markdown = markdown_tables(results, strict=False)
    table = _table(markdown, "RQ2: food, rules, sft")
    assert table[0] == ["Strategy", "Metric", "0.1", "0.5", "1"]
    assert [r[:2] for r in table[1:]] == [[s, m] for s in ("random", "length", "diversity", "difficulty")
                                          for m in ("P", "R", "C", "n")]
    random_p = table[1]
    assert random_p[2:] == ["0.340", "0.420", "0.520"]  # 0.2 + 0.02 + 0.1 + 0.2 * ratio
    assert markdown.count("### RQ2:") == 2 * 2 + 1  # domains x utilizations + the accumulation table
    multi = _table(markdown, "RQ2: multi-domain")
    settings = {(r[0], r[1], r[2]) for r in multi[1:]}
    assert ("sft", "multi-domain", "rules") in settings
    assert ("icl", "multi-format", "patterns+rules+thoughts") in settings
    assert ("sft", "one domain, full pool", "rules") in settings


def test_rq3_table_splits_training_and_prompt_knowledge(results):
    table = _table(markdown_tables(results), "RQ3")
    assert table[0][:3] == ["Utilization", "Training knowledge", "Prompt knowledge"]
    students = [r for r in table[1:] if r[0] != "reference"]
    assert len(students) == 4 + 4 + 16
    assert ["sft+icl", "rules", "thoughts"] == next(r[:3] for r in students if r[1:3] == ["rules", "thoughts"])
    assert next(r for r in students if r[0] == "icl" and r[2] == "raw")[1] == "-"
    assert next(r for r in students if r[0] == "sft" and r[1] == "raw")[2] == "-"


def test_strict_metrics_by_default_with_aicl_beside_them(results):
    strict = _table(markdown_tables(results), "RQ1")
    header, sft_rules = strict[0], next(r for r in strict if r[:2] == ["sft", "rules"])
    value = {name: sft_rules[header.index(name)] for name in ("food P", "food n", "food AICL P", "food AICL R")}
    assert value == {"food P": "0.260", "food n": "9/10", "food AICL P": "0.520", "food AICL R": "0.820"}


def test_repeats_are_averaged(results):
    repeated = pl.concat([results, results.head(1).with_columns(pl.col("precision") + 0.2)])
    markdown = markdown_tables(repeated, strict=False)
    assert "values are means" in markdown
    first = results.row(0, named=True)
    row = next(r for r in _table(markdown, "RQ1") if r[:2] == [first["utilization"], first["knowledge_format"]])
    assert row[6].strip("*") == f"{first['precision'] + 0.1:.3f}"
    assert row[9] == "18/20", "session counts of repeats are summed"


def test_nothing_scored_reads_dash_not_zero(results):
    failed = results.with_columns(
        pl.when((pl.col("knowledge_format") == "rules") & (pl.col("utilization") == "sft") & (pl.col("rq") == "rq1"))
        .then(0).otherwise(pl.col("n_scored")).alias("n_scored"))
    table = _table(markdown_tables(failed), "RQ1")
    header, sft_rules = table[0], next(r for r in table if r[:2] == ["sft", "rules"])
    assert [sft_rules[header.index(f"food {m}")] for m in ("P", "AICL P", "n")] == ["-", "-", "0/10"]


def test_summary_counts_failed_sessions_and_empty_results(results):
    assert f"no bundle found): {results.height} of {10 * results.height}" in markdown_tables(results)
    empty = markdown_tables(results.head(0))
    assert "No results to report." in empty and "## RQ1" not in empty


def test_missing_columns_are_named(results):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['recall', 'coverage'\]"):
        markdown_tables(results.drop("recall", "coverage"))
    with pytest.raises(ValueError, match=r"strict_precision"):
        markdown_tables(results.drop("strict_precision"), strict=True)


def test_plots_written_and_non_empty(results, tmp_path):
    paths = plot_results(results.filter(pl.col("domain") == "food"), tmp_path / "plots")  # one domain: faster
    assert [p.name for p in paths] == ["alignment_food.png", "rq1_food.png", "rq2_food_rules_icl.png",
                                       "rq2_food_rules_sft.png", "rq3_food.png"]
    assert all(p.exists() and p.stat().st_size > 5_000 for p in paths)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_read_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_results(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        read_results(bad)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_bundle", "report", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_prints_markdown_and_writes_report(results, tmp_path):
    path = tmp_path / "results.parquet"
    results.filter((pl.col("domain") == "food") & pl.col("rq").is_in(["rq1", "baseline"])).write_parquet(path)
    out = tmp_path / "report"  # one domain, one RQ: one plot, to keep the subprocess short
    done = _run("--results", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# kd-bundle results")
    assert "## RQ1: knowledge format x utilization" in done.stdout
    report = (out / "report.md").read_text()
    assert report.startswith(done.stdout.rstrip("\n")) and "![rq1_food](rq1_food.png)" in report
    assert sorted(p.name for p in out.glob("*.png")) == ["rq1_food.png"]
    assert (out / "rq1_food.png").stat().st_size > 0


def test_cli_errors_name_the_problem(results, tmp_path):
    missing = _run("--results", str(tmp_path / "absent.parquet"))
    assert missing.returncode == 2 and "absent.parquet" in missing.stderr
    path = tmp_path / "partial.parquet"
    results.drop("coverage").write_parquet(path)
    partial = _run("--results", str(path))
    assert partial.returncode == 2 and "['coverage']" in partial.stderr


def test_report_of_a_table_older_than_the_cost_and_session_columns(results):
    from kd_bundle.evaluation.results import OPTIONAL_COLUMNS
    from kd_bundle.report.document import markdown_report

    old = results.filter(pl.col("domain") == "food").drop(OPTIONAL_COLUMNS)
    markdown = markdown_report(old, n_boot=50)
    table = _table(markdown, "Confidence")
    sft_rules = next(r for r in table if r[1:7] == ["rq1", "student", "rules", "all", "1", "sft"])
    assert sft_rules[7:11] == ["0.260", "0.410", "0.310", "9/10"], "no per-session data: means, no interval"
    assert "## Cost" not in markdown and "## Knowledge quantity" not in markdown, "nothing measured, nothing shown"
    assert "## Factor impact" in markdown and "## Alignment" in markdown


def test_quantity_plot_per_domain_and_format(tmp_path):
    from kd_bundle.report.plots import plot_quantity

    quantity = pl.DataFrame({"domain": ["food"] * 4, "knowledge_format": ["rules"] * 4,
                             "strategy": ["random", "random", "length", "length"], "ratio": [0.5, 1.0, 0.5, 1.0],
                             "train_sessions": [5, 10, 5, 10], "pattern_lines": [0] * 4, "rule_count": [12, 30, 9, 30],
                             "thought_count": [0] * 4, "knowledge_tokens": [300, 700, 250, 700]})
    paths = plot_quantity(quantity, tmp_path)
    assert [p.name for p in paths] == ["quantity_food_rules.png"] and paths[0].stat().st_size > 5_000
    assert plot_quantity(quantity.with_columns(pl.lit(None).alias("train_sessions"), pl.lit(None).alias("rule_count"),
                                               pl.lit(None).alias("knowledge_tokens")), tmp_path / "old") == []


def test_rq1_plot_draws_positional_and_zero_shot_lines_and_error_bars(tmp_path, monkeypatch):
    from kd_bundle.report import plots

    def row(method: str, values: list[float], **labels) -> pl.DataFrame:
        n, mean = len(values), sum(values) / len(values)
        lists = dict(session_ids=list(range(1, n + 1)), session_scored=[True] * n, session_precision=values,
                     session_recall=values, session_hits=[1] * n, session_coverage_sum=values,
                     session_strict_recall=values, session_strict_coverage=values)
        scores = dict(precision=mean, recall=mean, coverage=mean, strict_precision=mean, strict_recall=mean,
                      strict_coverage=mean, n_sessions=n, n_scored=n, n_failed=0)
        return result_row(domain="food", **{"rq": "baseline", **labels}, method=method, **scores, **lists)

    spread = [0.1, 0.5, 0.3, 0.7, 0.2, 0.6]
    table = combine_results([row("first-two", spread), row("student", spread), row(
        "student", [v + 0.1 for v in spread], rq="rq1", knowledge_format="rules", utilization="icl")])
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, axes, path, extra=None: drawn.setdefault(path.name, axes) and path)
    plots.plot_results(table, tmp_path)
    ax = drawn["rq1_food.png"][0]
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert lines["first-two"] == pytest.approx(0.4) and lines["zero-shot student"] == pytest.approx(0.4)
    from matplotlib.container import BarContainer

    bar = next(c for c in ax.containers if isinstance(c, BarContainer))
    assert bar.errorbar is not None, "each bar carries its interval"
    (low, high), = [segment[:, 1] for segment in bar.errorbar.lines[2][0].get_segments()]
    assert low < 0.5 < high, "the rules bar (0.5) spans its bootstrap interval"


def test_adapter_curves_are_plotted_and_tabled_with_the_kept_step(tmp_path):
    from kd_bundle.evaluation.results import markdown_table
    from kd_bundle.report.curves import plot_training_curves
    from kd_bundle.report.document import markdown_report

    curve = dict(train_losses=[1.2, 0.9, 0.7, 0.6], valid_steps=[0, 2, 4], valid_losses=[1.1, 0.8, 0.85],
                 valid_precisions=[0.4, 0.45, 0.3], best_step=2, valid_loss=0.8, valid_strict_precision=0.45,
                 train_examples=150, train_steps=4, train_sessions=623, train_seconds=100.0, train_tokens=25_000)
    rows = [result_row(domain="electronic", rq="rq1", method="student", knowledge_format="raw", utilization="sft",
                       **_metrics(0.3, 0.3, 0.3), **curve),
            # RQ2 at ratio 1 is the same adapter: one panel, not two
            result_row(domain="electronic", rq="rq2", method="student", knowledge_format="raw", utilization="sft",
                       **_metrics(0.3, 0.3, 0.3), **curve),
            result_row(domain="electronic", rq="rq1", method="student", knowledge_format="raw", utilization="icl",
                       train_sessions=623, **_metrics(0.2, 0.2, 0.2)),
            result_row(domain="electronic", rq="baseline", method="first-two", **_metrics(0.4, 0.4, 0.4))]
    results = combine_results(rows)
    paths = plot_training_curves(results, tmp_path)
    assert [p.name for p in paths] == ["training_electronic.png"] and paths[0].stat().st_size > 5_000
    report = markdown_report(results, n_boot=50)
    training = _table(report, "Adapter training (chosen on the validation split)")
    assert len(training) == 2 and training[1][5:13] == ["623", "150", "4", "2", "0.400", "0.450", "1.100",
                                                          "0.800"], training  # header + 1 row
    header = markdown_table(results).splitlines()[0]
    assert header.endswith("| train_sessions | train_examples | train_steps | best_step |"), header
    assert plot_training_curves(results.filter(pl.col("utilization") != "sft"), tmp_path / "none") == []
