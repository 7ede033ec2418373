"""The study's tables and plots for one results table: files under results/<key>/ and a markdown artifact in the UI."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from kd_bundle import report
from kd_bundle.store import ArtifactRef, read_artifact


def publish_report(table: ArtifactRef, key: str, out_dir: Path) -> Path:
    """Called from a flow (side effects only). Returns the folder holding report.md and the PNG plots."""
    results = read_artifact(table)
    folder = out_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    markdown = report.markdown_tables(results)
    plots = report.plot_results(results, folder)
    (folder / "report.md").write_text(markdown + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    listing = "\n".join(f"- `{p}`" for p in plots)
    create_markdown_artifact(key=f"{key}-report", markdown=f"{markdown}\n\n### Plots\n{listing}\n",
                             description=f"kd-bundle report ({table})")
    return folder
