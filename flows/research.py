"""The study's research questions as flows, one domain per run, and the full grid with a schedule.

Each flow expands its part of the grid (kd_bundle.grid) and hands the cells to flows.cells.evaluate_cells,
which asks for every knowledge artifact, index and adapter once; Prefect's content cache shares them across
flows and reruns.
"""

from __future__ import annotations

from prefect import flow

from flows.cells import PipelineConfig, evaluate_cells
from flows.params import with_deployment_values
from kd_bundle.config import Domain
from kd_bundle.grid import GridConfig, RQ1Grid, RQ2Grid, RQ3Grid, expand
from kd_bundle.store import ArtifactRef


@flow(name="rq1-knowledge-format", flow_run_name="rq1-{domain}")
def rq1_knowledge_format(domain: Domain = "electronic", grid: RQ1Grid = RQ1Grid(),
                         pipeline: PipelineConfig = PipelineConfig()) -> ArtifactRef:
    """RQ1: which knowledge format (raw examples, patterns, rules, thoughts) helps the student most, by ICL or SFT?"""
    grid, pipeline = with_deployment_values("grid", grid), with_deployment_values("pipeline", pipeline)
    cells = expand(GridConfig(domains=(domain,), rqs=("rq1",), rq1=grid))
    return evaluate_cells(cells, pipeline, key=f"rq1-{domain}")


@flow(name="rq2-knowledge-quantity", flow_run_name="rq2-{domain}")
def rq2_knowledge_quantity(domain: Domain = "electronic", grid: RQ2Grid = RQ2Grid(),
                           pipeline: PipelineConfig = PipelineConfig()) -> ArtifactRef:
    """RQ2: does more distilled knowledge help: sampling strategy x ratio, knowledge pooled across domains or formats?"""
    grid, pipeline = with_deployment_values("grid", grid), with_deployment_values("pipeline", pipeline)
    cells = expand(GridConfig(domains=(domain,), rqs=("rq2",), rq2=grid))
    return evaluate_cells(cells, pipeline, key=f"rq2-{domain}")


@flow(name="rq3-knowledge-utilization", flow_run_name="rq3-{domain}")
def rq3_knowledge_utilization(domain: Domain = "electronic", grid: RQ3Grid = RQ3Grid(),
                              pipeline: PipelineConfig = PipelineConfig()) -> ArtifactRef:
    """RQ3: should the student use the knowledge in its prompt (ICL), in its weights (SFT), or both (SFT+ICL)?"""
    grid, pipeline = with_deployment_values("grid", grid), with_deployment_values("pipeline", pipeline)
    cells = expand(GridConfig(domains=(domain,), rqs=("rq3",), rq3=grid))
    return evaluate_cells(cells, pipeline, key=f"rq3-{domain}")


@flow(name="full-grid", flow_run_name="full-grid")
def full_grid(grid: GridConfig = GridConfig(), pipeline: PipelineConfig = PipelineConfig()) -> ArtifactRef:
    """The whole study: RQ1-RQ3 on every domain, each shared artifact computed once."""
    grid, pipeline = with_deployment_values("grid", grid), with_deployment_values("pipeline", pipeline)
    return evaluate_cells(expand(grid), pipeline, key="full-grid")
