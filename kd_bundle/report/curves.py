"""Each adapter's training curves: the train loss per step and the validation loss where it was measured, with the
kept step marked, so that a reader sees whether an adapter learned, overfitted, or was never better than its base
(kept step 0). One PNG per domain, one panel per adapter; rows that share an adapter share its panel."""

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
        fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.8 * lines), squeeze=False,
                                 constrained_layout=True)
        for ax in axes.flat[mine.height:]:
            ax.set_visible(False)
        for ax, row in zip(axes.flat, mine.iter_rows(named=True)):
            steps = list(range(1, len(row["train_losses"]) + 1))
            ax.plot(steps, row["train_losses"], color="C0", linewidth=1, label="train")
            if row["valid_losses"]:
                ax.plot(row["valid_steps"], row["valid_losses"], color="C1", marker="o", markersize=3,
                        label="validation")
            if row["best_step"] is not None:
                ax.axvline(row["best_step"], color="black", linestyle=":", linewidth=1, label="kept step")
            ax.set_title(f"{row['label']} ({row['train_examples'] or '?'} examples)", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes.flat[0].set_ylabel("answer loss")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
        fig.suptitle(f"{domain}: adapter training, train and validation answer loss")
        path = Path(out_dir) / f"training_{domain}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
