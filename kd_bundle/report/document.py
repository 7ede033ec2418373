"""The study's report from any results Parquet (kd_bundle.evaluation.results): markdown tables and PNG plots.

    python -m kd_bundle report --results results.parquet [--out DIR] [--aicl] [--boot N]

prints the markdown and, with --out, writes DIR/report.md and the PNGs. Sections: the per-RQ tables
(kd_bundle.report.tables), every configuration with 95% bootstrap intervals and paired verdicts, factor impact,
knowledge quantity, alignment gains, knowledge summary and cost (kd_bundle.report.analysis); plots: kd_bundle.report.plots.
Metrics are strict by default (a failed session scores 0) with AICL's beside them; --aicl makes AICL's the main ones.
A table written before a column existed reads as "-" there, never as 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import polars as pl

from kd_bundle.evaluation.results import conform
from kd_bundle.report import analysis
from kd_bundle.report.plots import plot_results
from kd_bundle.report.tables import METRICS, REQUIRED_COLUMNS, markdown_lines, markdown_tables

__all__ = ["cli", "markdown_report", "markdown_tables", "plot_results", "read_results"]
_LABELS = {"domain": "Domain", "rq": "RQ", "method": "Method", "knowledge_format": "Knowledge", "strategy": "Strategy",
           "ratio": "Ratio", "utilization": "Utilization"}


def markdown_report(results: pl.DataFrame, *, strict: bool = True, n_boot: int = 1000) -> str:
    """The per-RQ tables followed by the analyses' sections; a section with nothing to show is left out."""
    prefix = "strict_" if strict else ""
    kind = "strict" if strict else "AICL"
    results = conform(results)
    lines = [markdown_tables(results, strict=strict).rstrip("\n")]
    lines += _confidence_section(analysis.confidence(results, n_boot=n_boot), prefix, kind)
    impact = pl.concat([analysis.factor_impact(results, f"{prefix}{m}") for m in METRICS])
    lines += _section("Factor impact", impact.filter(pl.col("n_configurations") > 0), {
        "domain": "Domain", "metric": "Metric", "n_configurations": "Configurations", "format_share": "Format %",
        "quantity_share": "Quantity %", "utilization_share": "Utilization %", "r2": "R2"},
        "Type II sum-of-squares share of each factor in a main-effects model over the student configurations "
        "(README, Report); '-' where nothing varies.")
    lines += _section("Knowledge quantity (ratio vs pool)", analysis.knowledge_quantity(results), {
        "domain": "Domain", "knowledge_format": "Knowledge", "strategy": "Strategy", "ratio": "Ratio",
        "train_sessions": "Sessions", "pattern_lines": "Pattern lines", "rule_count": "Rules",
        "thought_count": "Thoughts", "knowledge_tokens": "Knowledge tokens"})
    gains = analysis.alignment_gains(results, f"{prefix}precision").with_columns(
        pl.when(pl.col("aligned")).then(pl.lit("yes")).otherwise(pl.lit("")).alias("aligned"))
    lines += _section(f"Alignment: SFT+ICL vs SFT ({kind} precision)", gains, {
        "domain": "Domain", "train_format": "Training", "prompt_format": "Prompt", "aligned": "Aligned",
        "sft": "SFT", "sft_icl": "SFT+ICL", "gain": "Gain"}, "Gain = (SFT+ICL - SFT) / SFT.", percent={"gain"})
    lines += _section("Knowledge summary (full pools)", analysis.knowledge_summary(results), {
        "domain": "Domain", "knowledge_format": "Format", "train_sessions": "Sessions",
        "teacher_sessions": "Teacher-distilled", "items": "Items",
        "knowledge_tokens": "Tokens", "knowledge_failed": "Failed sessions", "knowledge_truncated": "Truncated",
        "feedback_rounds": "Feedback rounds", "extraction_tokens": "Teacher tokens", "extraction_cost": "Cost",
        "extraction_seconds": "Teacher s"},
        "Items: training sessions (raw), pattern lines, rules or thoughts. Cost '-': no price configured.")
    lines += _section("Adapter training (chosen on the validation split)", analysis.training_table(results), {
        "domain": "Domain", "knowledge_format": "Knowledge", "utilization": "Utilization", "strategy": "Strategy",
        "ratio": "Ratio", "train_sessions": "Pool sessions", "train_examples": "Examples", "train_steps": "Steps",
        "best_step": "Kept step", "base_valid_precision": "Base valid strict P",
        "valid_strict_precision": "Kept valid strict P", "base_valid_loss": "Base valid loss",
        "valid_loss": "Kept valid loss", "train_seconds": "Train s (with validation)",
        "tokens_per_second": "Tokens/s (with validation)"},
        "Kept step: the step whose decoded validation answers had the highest strict precision, ties by the lower "
        "answer loss (SFTConfig.select_by='strict_precision'; 'loss': the lowest loss alone); 0 = no step beat the "
        "base, which is then what the row applies. '-': not measured (no validation split, or selection by loss for "
        "a reasoning adapter). Curves: training_<domain>.png.")
    lines += _section(f"Cost per {analysis.PER:,} sessions, teacher vs student", analysis.cost_table(results), {
        **{k: v for k, v in _LABELS.items() if k not in ("rq", "strategy", "ratio")}, "n_sessions": "Sessions",
        "tokens_per_1k": "Tokens", "seconds_per_1k": "Seconds", "money_per_1k": "Money",
        "one_off_tokens": "One-off teacher tokens", "one_off_money": "One-off money",
        "one_off_seconds": "One-off s (extraction + training)", "break_even_tokens": "Break-even (tokens)",
        "break_even_seconds": "Break-even (s)"},
        "Student tokens = prompt + new tokens on its own hardware (money 0); teacher money only where a price is "
        "set. Break-even: sessions after which the one-off cost is repaid against the zero-shot teacher; '-': never "
        "or not measured.")
    return "\n".join(lines).rstrip() + "\n"


def read_results(path: Path) -> pl.DataFrame:
    """The results table from a Parquet file named on the command line (the CLI edge; stages pass frames)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        results = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; see kd_bundle.evaluation.results.RESULT_SCHEMA")
    return results


def cli(argv: list[str] | None = None) -> int:
    """`python -m kd_bundle report --results FILE [--out DIR] [--aicl] [--boot N]`."""
    parser = argparse.ArgumentParser(prog="python -m kd_bundle report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True,
                        help="results Parquet (kd_bundle.evaluation.results schema)")
    parser.add_argument("--out", type=Path, help="write report.md and the PNG plots into this folder")
    parser.add_argument("--aicl", action="store_true", help="main metrics AICL's (failed sessions left out)")
    parser.add_argument("--strict", action="store_true", help="strict main metrics (the default; kept for scripts)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval (default 1000)")
    args = parser.parse_args(argv)
    try:
        results = read_results(args.results)
        markdown = markdown_report(results, strict=not args.aicl, n_boot=args.boot)
    except (FileNotFoundError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        plots = plot_results(results, args.out, strict=not args.aicl)
        figures = "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
        (args.out / "report.md").write_text(markdown + ("\n## Plots\n" + figures if plots else ""))
        print(f"report: wrote {args.out / 'report.md'} and {len(plots)} plot(s)", file=sys.stderr)
    print(markdown, end="")
    return 0


def _confidence_section(table: pl.DataFrame, prefix: str, kind: str) -> list[str]:
    """Every configuration: main metrics as 'value [lo, hi]', n, and paired verdicts vs zero-shot / teacher."""
    if table.height == 0:
        return []
    header = list(_LABELS.values()) + [f"{kind} {s}" for s in METRICS.values()] + [
        "n", "vs zero-shot", "vs teacher", "vs positional"]
    rows = []
    for r in table.iter_rows(named=True):
        nothing = r["n_scored"] == 0
        values = ["- (nothing scored)" if nothing else _interval(r, f"{prefix}{m}") for m in METRICS]
        verdicts = [" ".join(r.get(f"vs_{k}_{prefix}{m}") or "." for m in METRICS)
                    for k in ("zero_shot", "teacher", "positional")]
        labels = [_text(r[c], plain=c == "ratio") for c in _LABELS]
        if r.get("beats_positional") is False:  # an LLM row no better than a rule that reads no title
            labels[2] += " (no better than position)"
        rows.append(labels + values + [f"{r['n_scored']}/{r['n_sessions']}", *verdicts])
    note = (f"95% percentile-bootstrap intervals over sessions ({kind} metrics); seeds pooled per session. Verdicts "
            "per P R C from a paired bootstrap on the sessions both rows share: '+' above, '-' below, '=' not "
            "distinguishable, '.' no per-session data or the row itself. 'vs positional' compares with the best "
            "positional reference of each metric (first two products, last two, or the whole session as one "
            "bundle: rules that read no title); an LLM row above it on no strict metric is marked \"no better "
            "than position\".")
    return ["", "## Confidence: every configuration", "", note, "", *markdown_lines(header, rows)]


def _section(title: str, frame: pl.DataFrame, columns: dict[str, str], note: str = "",
             percent: set[str] | None = None) -> list[str]:
    if frame.height == 0:
        return []
    percent = percent or set()
    rows = [[_text(r.get(c), c in percent, c == "ratio") for c in columns] for r in frame.iter_rows(named=True)]
    return ["", f"## {title}", "", *([note, ""] if note else []), *markdown_lines(list(columns.values()), rows)]


def _interval(row: dict[str, Any], metric: str) -> str:
    value, lo, hi = row.get(metric), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def _text(value: Any, percent: bool = False, plain: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if percent:
            return f"{100 * value:+.1f}%"
        if plain:
            return f"{value:g}"
        # metrics keep 3 decimals; token counts, seconds and percentages read better without noise digits
        if abs(value) >= 100 or (value.is_integer() and abs(value) >= 1):
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)
