"""A flow's report reaches the UI: the tables as a markdown artifact and every PNG plot as an image artifact."""

from __future__ import annotations

import base64

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.runtime import flow_run

from kd_bundle.store import write_artifact
from tasks.report import plot_key, publish_report
from tests.kd_bundle.report.test_report import synthetic_results


@flow
def report_flow(out_dir):
    folder = publish_report(write_artifact(synthetic_results(), "results"), "rq-all", out_dir)
    return folder, flow_run.id


def test_plots_are_image_artifacts_of_the_run(isolated_store):
    folder, run_id = report_flow(isolated_store / "published")
    plots = sorted(folder.glob("*.png"))
    assert len(plots) > 3 and (folder / "report.md").exists()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_key = {a.key: a for a in artifacts}
    assert by_key["rq-all-report"].type == "markdown"
    assert "RQ1" in by_key["rq-all-report"].data
    for plot in plots:
        image = by_key[plot_key("rq-all", plot)]
        assert image.type == "image"
        prefix, payload = image.data.split(",", 1)
        assert prefix == "data:image/png;base64"
        assert base64.b64decode(payload) == plot.read_bytes()
