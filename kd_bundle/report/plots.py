"""The study's plots as PNG files, from the results table: RQ1 bars, RQ2 metric vs ratio, RQ3 methods (the
per-RQ views of kd_bundle.report.tables), ratio vs knowledge quantity (Figure 3) and the alignment-gain heatmap
(Figure 13) of kd_bundle.report.analysis. Every plot function returns the paths it wrote; a missing value draws nothing."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from kd_bundle.evaluation.baselines import POSITIONAL_METHODS
from kd_bundle.evaluation.results import CONFIG_COLUMNS as LABEL_COLUMNS
from kd_bundle.grid import KNOWLEDGE_FORMATS, MULTI_DOMAIN, MULTI_FORMAT, SAMPLING_STRATEGIES, UTILIZATIONS
from kd_bundle.report import analysis
from kd_bundle.report.curves import plot_training_curves
from kd_bundle.report.tables import METRICS, STUDENT, configurations, domains_of, format_rank, rank, rq3_frame


def plot_results(results: pl.DataFrame, out_dir: Path, *, strict: bool = True) -> list[Path]:
    """PNG plots like the study's, written to `out_dir`: RQ1 formats side by side (grouped bars) per domain,
    RQ2 metric against ratio per strategy per (domain, format, utilization), RQ3 methods side by side per domain,
    and each adapter's train and validation curves (kd_bundle.report.curves).

    Returns:
        The written files, sorted.
    """
    import matplotlib

    matplotlib.use("Agg")
    cells = _with_intervals(configurations(results, strict), results, strict)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zero_shot = ((pl.col("method") == STUDENT) & (pl.col("knowledge_format") == "none")
                 & (pl.col("utilization") == "none"))
    refs = cells.filter((pl.col("method") != STUDENT) | zero_shot)  # baselines, positional rules, teacher, zero-shot
    students = cells.filter(pl.col("method") == STUDENT)
    written = []
    for domain in domains_of(cells):
        mine = students.filter(pl.col("domain") == domain)
        domain_refs = refs.filter(pl.col("domain") == domain)
        rq1 = mine.filter(pl.col("rq") == "rq1")
        if rq1.height:
            written.append(_plot_rq1(rq1, domain_refs, out_dir / f"rq1_{_slug(domain)}.png", domain))
        rq2 = mine.filter((pl.col("rq") == "rq2") & pl.col("strategy").is_in(SAMPLING_STRATEGIES))
        for fmt, utilization in rq2.select("knowledge_format", "utilization").unique().sort(pl.all()).iter_rows():
            path = out_dir / f"rq2_{_slug(domain)}_{_slug(fmt)}_{_slug(utilization)}.png"
            extras = mine.filter(
                (pl.col("rq") == "rq2") & (pl.col("utilization") == utilization)
                & (((pl.col("strategy") == MULTI_DOMAIN) & (pl.col("knowledge_format") == fmt))
                   | (pl.col("strategy") == MULTI_FORMAT))
            )
            written.append(_plot_rq2(rq2, extras, domain_refs, path, domain, fmt, utilization))
        rq3 = rq3_frame(mine.filter(pl.col("rq") == "rq3"))
        if rq3.height:
            written.append(_plot_rq3(rq3, domain_refs, out_dir / f"rq3_{_slug(domain)}.png", domain))
    written += plot_quantity(analysis.knowledge_quantity(results), out_dir)
    prefix = "strict_" if strict else ""
    written += plot_alignment(analysis.alignment_gains(results, f"{prefix}precision"), out_dir)
    written += plot_training_curves(results, out_dir)
    return sorted(written)


def plot_quantity(quantity: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Figure 3: sampling ratio vs the knowledge it yields (sessions, items, tokens), one line per strategy, one
    PNG per (domain, format). Items are the format's own unit: pattern lines, rules or thoughts."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    items = {"patterns": "pattern_lines", "rules": "rule_count", "thoughts": "thought_count"}
    for domain, fmt in quantity.select("domain", "knowledge_format").unique(maintain_order=True).iter_rows():
        part = quantity.filter((pl.col("domain") == domain) & (pl.col("knowledge_format") == fmt))
        measures = ["train_sessions", *([items[fmt]] if fmt in items else []), "knowledge_tokens"]
        if part.select(pl.col(measures).is_null().all()).row(0) == (True,) * len(measures):
            continue  # an old results table: nothing measured to draw
        fig, axes = _figure(f"Knowledge quantity ({domain}, {fmt}): sampling ratio vs pool", 4.2 * len(measures),
                            panels=measures)
        for ax, measure in zip(axes, measures):
            for strategy in [s for s in SAMPLING_STRATEGIES if s in part["strategy"].to_list()]:
                line = part.filter(pl.col("strategy") == strategy).sort("ratio")
                ax.plot(line["ratio"].to_list(), [_value(v) for v in line[measure].to_list()], marker="o",
                        label=strategy, color=_color(strategy))
            ax.set_xlabel("sampling ratio")
        written.append(_save(fig, axes, out_dir / f"quantity_{_slug(domain)}_{_slug(fmt)}.png"))
    return written


def plot_alignment(gains: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Figure 13: relative gain of SFT+ICL over SFT, training format (rows) x prompt format (columns), per domain;
    aligned pairs (same format) framed in black, missing pairs blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    for domain in gains["domain"].unique(maintain_order=True).to_list():
        part = gains.filter(pl.col("domain") == domain)
        trains = [f for f in KNOWLEDGE_FORMATS if f in part["train_format"].to_list()]
        prompts = [f for f in KNOWLEDGE_FORMATS if f in part["prompt_format"].to_list()]
        grid = np.full((len(trains), len(prompts)), np.nan)
        for r in part.iter_rows(named=True):
            grid[trains.index(r["train_format"]), prompts.index(r["prompt_format"])] = _value(r["gain"]) * 100
        fig, ax = plt.subplots(figsize=(1.4 * len(prompts) + 2.5, 1.1 * len(trains) + 1.8), constrained_layout=True)
        bound = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0, 1e-9)
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
        for i, j in np.ndindex(grid.shape):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.1f}%", ha="center", va="center", fontsize=9)
            if trains[i] == prompts[j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        ax.set_xticks(range(len(prompts)), prompts)
        ax.set_yticks(range(len(trains)), trains)
        ax.set_xlabel("prompt knowledge (ICL)")
        ax.set_ylabel("training knowledge (SFT)")
        ax.set_title(f"Gain of SFT+ICL over SFT ({domain})")
        fig.colorbar(image, ax=ax, label="relative gain (%)")
        path = out_dir / f"alignment_{_slug(domain)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _plot_rq1(rq1: pl.DataFrame, refs: pl.DataFrame, path: Path, domain: str) -> Path:
    rq1 = rq1.with_columns(rank("utilization", UTILIZATIONS), format_rank())
    formats = rq1.sort("format_rank")["knowledge_format"].unique(maintain_order=True).to_list()
    utilizations = rq1.sort("utilization_rank")["utilization"].unique(maintain_order=True).to_list()
    values = {(r["knowledge_format"], r["utilization"]): r for r in rq1.iter_rows(named=True)}
    fig, axes = _figure(f"RQ1 ({domain}): knowledge format x utilization", width=4.2 * 3)
    width = 0.8 / len(utilizations)
    for ax, metric in zip(axes, METRICS):
        for i, utilization in enumerate(utilizations):
            rows = [values.get((f, utilization), {}) for f in formats]
            ax.bar([x + (i - (len(utilizations) - 1) / 2) * width for x in range(len(formats))],
                   [_value(r.get(metric)) for r in rows], width, yerr=_error_bars(rows, metric), capsize=3,
                   label=utilization, color=_color(utilization))
        ax.set_xticks(range(len(formats)), formats)
        _reference_lines(ax, refs, metric)
    return _save(fig, axes, path)


def _plot_rq2(rq2: pl.DataFrame, extras: pl.DataFrame, refs: pl.DataFrame, path: Path, domain: str, fmt: str,
              utilization: str) -> Path:
    part = rq2.filter((pl.col("knowledge_format") == fmt) & (pl.col("utilization") == utilization))
    part = part.with_columns(rank("strategy", SAMPLING_STRATEGIES)).sort("strategy_rank", "ratio")
    fig, axes = _figure(f"RQ2 ({domain}): {fmt} knowledge, {utilization}: metric vs sampling ratio", width=4.2 * 3)
    for ax, metric in zip(axes, METRICS):
        for strategy in part["strategy"].unique(maintain_order=True).to_list():
            line = part.filter(pl.col("strategy") == strategy)
            ax.plot(line["ratio"].to_list(), line[metric].to_list(), marker="o", label=strategy, color=_color(strategy))
        for i, (row, marker) in enumerate(zip(extras.iter_rows(named=True), "*DPX^v")):  # full pools, nudged right
            ax.plot([1.0 + 0.025 * (i + 1)], [row[metric]], marker=marker, markersize=9, linestyle="none",
                    color="black", label=f"{row['strategy']}: {row['knowledge_format']}")
        ax.set_xlabel("sampling ratio")
        _reference_lines(ax, refs, metric)
    return _save(fig, axes, path)


def _plot_rq3(rq3: pl.DataFrame, refs: pl.DataFrame, path: Path, domain: str) -> Path:
    labels = [f"{r['utilization']}: {r['train_knowledge']} / {r['prompt_knowledge']}"
              for r in rq3.iter_rows(named=True)]
    height = max(3.5, 0.32 * len(labels) + 1.5)
    fig, axes = _figure(f"RQ3 ({domain}): utilization (training / prompt knowledge)", width=4.6 * 3, height=height)
    colors = [_color(u) for u in rq3["utilization"].to_list()]
    for ax, metric in zip(axes, METRICS):
        rows = list(rq3.iter_rows(named=True))
        ax.barh(range(len(labels)), [_value(r.get(metric)) for r in rows], xerr=_error_bars(rows, metric), capsize=3,
                color=colors)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0] else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        _reference_lines(ax, refs, metric, vertical=True)
    from matplotlib.patches import Patch

    legend = [Patch(color=_color(u), label=u) for u in rq3["utilization"].unique(maintain_order=True).to_list()]
    return _save(fig, axes, path, legend)


def _figure(title: str, width: float, height: float = 3.8, panels: list[str] | None = None):
    import matplotlib.pyplot as plt

    panels = panels or list(METRICS)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), constrained_layout=True, squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, panels):
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, list(axes)


_STYLES = ["--", ":", "-.", (0, (5, 1)), (0, (1, 3)), (0, (3, 1, 1, 1)), (0, (5, 3))]


def _reference_lines(ax, refs: pl.DataFrame, metric: str, vertical: bool = False) -> None:
    """One line per reference row: the zero-shot student in black, the positional rules (no title read) in red,
    the baselines and the teacher in grey."""
    for i, row in enumerate(refs.iter_rows(named=True)):
        if row[metric] is None:
            continue
        if row["method"] == STUDENT:
            color, label = "black", "zero-shot student"
        else:
            color, label = ("C3" if row["method"] in POSITIONAL_METHODS else "grey"), row["label"]
        draw = ax.axvline if vertical else ax.axhline
        draw(row[metric], linestyle=_STYLES[i % len(_STYLES)], color=color, linewidth=1.2, label=label)


def _with_intervals(cells: pl.DataFrame, results: pl.DataFrame, strict: bool) -> pl.DataFrame:
    """The configurations with `<metric>_lo` / `_hi` of their main metrics (95% bootstrap, analysis.confidence);
    null where a row has no per-session values."""
    prefix = "strict_" if strict else ""
    bounds = analysis.confidence(results, n_boot=400)
    columns = {f"{prefix}{m}_{side}": f"{m}_{side}" for m in METRICS for side in ("lo", "hi")}
    present = [c for c in columns if c in bounds.columns]
    if not present or bounds.height == 0:
        return cells.with_columns([pl.lit(None, dtype=pl.Float64).alias(v) for v in columns.values()])
    bounds = bounds.select(*LABEL_COLUMNS, *present).rename({c: columns[c] for c in present})
    bounds = bounds.with_columns([pl.col(c).cast(cells.schema[c]) for c in LABEL_COLUMNS])
    return cells.join(bounds, on=LABEL_COLUMNS, how="left", nulls_equal=True)


def _error_bars(rows: list[dict], metric: str):
    """2 x n distances below / above each bar's value (0 where no interval), for matplotlib's yerr / xerr."""
    lower, upper = [], []
    for row in rows:
        value, lo, hi = row.get(metric), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
        ok = None not in (value, lo, hi)
        lower.append(max(value - lo, 0.0) if ok else 0.0)
        upper.append(max(hi - value, 0.0) if ok else 0.0)
    return [lower, upper]


def _save(fig, axes, path: Path, extra_handles: list | None = None) -> Path:
    import matplotlib.pyplot as plt

    handles, labels = axes[-1].get_legend_handles_labels()
    extra = extra_handles or []
    unique = dict(zip([h.get_label() for h in extra] + labels, extra + handles))
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=min(len(unique), 5), fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _color(name: str) -> str:
    palette = {"random": "C0", "length": "C1", "diversity": "C2", "difficulty": "C3",
               "icl": "C0", "sft": "C1", "sft+icl": "C2"}
    return palette.get(name, "C7")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _value(metric: float | None) -> float:
    """A missing value draws no bar (NaN), never a bar of height 0."""
    return float("nan") if metric is None else metric
