"""The study's tables and plots for one results table: files under results/<key>/, and in the UI a markdown
artifact with the tables and one image artifact per plot."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from prefect.artifacts import create_image_artifact, create_markdown_artifact

from kd_bundle.report import document
from kd_bundle.report.plots import plot_results
from kd_bundle.store import ArtifactRef, read_artifact


def publish_report(table: ArtifactRef, key: str, out_dir: Path) -> Path:
    """Called from a flow (side effects only). Returns the folder holding report.md and the PNG plots."""
    results = read_artifact(table)
    folder = out_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    markdown = document.markdown_report(results)
    plots = plot_results(results, folder)
    (folder / "report.md").write_text(markdown + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    listing = "\n".join(f"- `{p}` (image artifact `{plot_key(key, p)}`)" for p in plots)
    create_markdown_artifact(key=f"{key}-report", markdown=f"{markdown}\n\n### Plots\n{listing}\n",
                             description=f"kd-bundle report ({table})")
    for plot in plots:
        # A data URI: the UI shows the PNG itself, with no file server or bucket for it to reach.
        image = "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode()
        create_image_artifact(image_url=image, key=plot_key(key, plot), description=f"{plot.name} ({table})")
    return folder


def plot_key(key: str, plot: Path) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", f"{key}-{plot.stem}".lower()).strip("-")
