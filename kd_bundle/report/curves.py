"""Each adapter's training curves: the train loss per step, the validation loss and the decoded validation strict
precision (right axis) where they were measured, with the kept step marked, so that a reader sees whether an adapter
learned, overfitted, learned a loss its answers do not show, or was never better than its base (kept step 0). One
PNG per domain, one panel per adapter; rows that share an adapter share its panel."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from kd_bundle.evaluation.results import conform

_PANELS_PER_ROW = 4


def adapter_rows(results: pl.DataFrame) -> pl.DataFrame:
    """One row per distinct adapter per domain (equal curves are one adapter: RQ2 at ratio 1 reuses RQ1's) with its
    label and training figures."""
    results = conform(results)
    rows = results.filter(pl.col("train_losses").list.len().fill_null(0) > 0)
    if rows.height == 0:
        return rows.with_columns(label=pl.lit(None, dtype=pl.String))
    label = pl.concat_str([pl.col("knowledge_format"), pl.col("utilization"), pl.col("strategy"),
                           pl.col("ratio").round(2).cast(pl.String)], separator=" ")
    return rows.with_columns(label=label).unique(["domain", "train_losses", "valid_losses"], keep="first",
                                                 maintain_order=True)


def plot_training_curves(results: pl.DataFrame, out_dir: Path) -> list[Path]:
    """`training_<domain>.png` for every domain with an adapter that recorded its curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adapters = adapter_rows(results)
    written = []
    for domain in adapters["domain"].unique(maintain_order=True).to_list():
        mine = adapters.filter(pl.col("domain") == domain)
        columns = min(mine.height, _PANELS_PER_ROW)
        lines = math.ceil(mine.height / columns)
        fig, axes = plt.subplots(lines, columns, figsize=(max(3.6 * columns, 6.0), 2.8 * lines + 0.4), squeeze=False,
                                 constrained_layout=True)
        for ax in axes.flat[mine.height:]:
            ax.set_visible(False)
        precision_handles: tuple[list, list] = ([], [])
        for ax, row in zip(axes.flat, mine.iter_rows(named=True)):
            steps = list(range(1, len(row["train_losses"]) + 1))
            ax.plot(steps, row["train_losses"], color="C0", linewidth=1, label="train")
            if row["valid_losses"]:
                ax.plot(row["valid_steps"], row["valid_losses"], color="C1", marker="o", markersize=3,
                        label="validation loss")
            if row["valid_precisions"]:
                right = ax.twinx()
                right.plot(row["valid_steps"], row["valid_precisions"], color="C2", marker="s", markersize=3,
                           label="validation strict P")
                right.set_ylim(0, 1)
                right.tick_params(labelsize=7)
                precision_handles = right.get_legend_handles_labels()
            if row["best_step"] is not None:
                ax.axvline(row["best_step"], color="black", linestyle=":", linewidth=1, label="kept step")
            ax.set_title(f"{row['label']} ({row['train_examples'] or '?'} examples)", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes.flat[0].set_ylabel("answer loss")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if precision_handles[0]:
            handles, labels = handles + precision_handles[0], labels + precision_handles[1]
        fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
        fig.suptitle(f"{domain}: answer loss (left), validation strict precision (right)", fontsize=10)
        path = Path(out_dir) / f"training_{domain}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
