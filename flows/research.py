"""The study's research questions as flows, one domain per run, and the full grid with a schedule.

Each flow expands its part of the grid (kd_bundle.grid) and hands the cells to flows.cells.evaluate_cells,
which asks for every knowledge artifact, index and adapter once; Prefect's content cache shares them across
flows and reruns. Every flow takes your own data folder (`data_dir`) in place of a shipped domain.
"""

from __future__ import annotations

from prefect import flow

from flows.cells import evaluate_cells
from flows.params import data_source, run_name, with_data_dirs, with_deployment_values
from flows.pipeline import PipelineConfig
from kd_bundle.config import ShippedDomain
from kd_bundle.grid import GridConfig, RQ1Grid, RQ2Grid, RQ3Grid, expand
from kd_bundle.store import ArtifactRef


def _with_data(domain: str, data_dir: str | None, domain_name: str | None,
               pipeline: PipelineConfig) -> tuple[str, PipelineConfig]:
    domain, data_dirs = data_source(domain, data_dir, domain_name)
    return domain, with_data_dirs(with_deployment_values("pipeline", pipeline), data_dirs)


@flow(name="rq1-knowledge-format", flow_run_name=run_name("rq1"))
def rq1_knowledge_format(domain: ShippedDomain = "electronic", grid: RQ1Grid = RQ1Grid(),
                         pipeline: PipelineConfig = PipelineConfig(), data_dir: str | None = None,
                         domain_name: str | None = None) -> ArtifactRef:
    """RQ1: which knowledge format (raw examples, patterns, rules, thoughts) helps the student most, by ICL or SFT?

    Args:
        domain: A shipped domain (electronic, clothing, food); ignored when data_dir is given.
        data_dir: Your own data: a folder with items and bundles tables (CSV or Parquet, docs/data.md).
        domain_name: The label of data_dir's rows and artifacts (default: the folder's name).
    """
    domain, pipeline = _with_data(domain, data_dir, domain_name, pipeline)
    cells = expand(GridConfig(domains=(domain,), rqs=("rq1",), rq1=with_deployment_values("grid", grid)))
    return evaluate_cells(cells, pipeline, key=f"rq1-{domain}")


@flow(name="rq2-knowledge-quantity", flow_run_name=run_name("rq2"))
def rq2_knowledge_quantity(domain: ShippedDomain = "electronic", grid: RQ2Grid = RQ2Grid(),
                           pipeline: PipelineConfig = PipelineConfig(), data_dir: str | None = None,
                           domain_name: str | None = None) -> ArtifactRef:
    """RQ2: does more distilled knowledge help: sampling strategy x ratio, knowledge pooled across domains or formats?

    Args:
        domain: A shipped domain (electronic, clothing, food); ignored when data_dir is given.
        data_dir: Your own data: a folder with items and bundles tables (CSV or Parquet, docs/data.md).
        domain_name: The label of data_dir's rows and artifacts (default: the folder's name).
    """
    domain, pipeline = _with_data(domain, data_dir, domain_name, pipeline)
    grid = with_deployment_values("grid", grid)
    if data_dir is not None:  # the multi-domain cells pool the shipped domains' knowledge with yours
        grid = grid.model_copy(update={"accumulate_domains": (domain, *grid.accumulate_domains)})
    cells = expand(GridConfig(domains=(domain,), rqs=("rq2",), rq2=grid))
    return evaluate_cells(cells, pipeline, key=f"rq2-{domain}")


@flow(name="rq3-knowledge-utilization", flow_run_name=run_name("rq3"))
def rq3_knowledge_utilization(domain: ShippedDomain = "electronic", grid: RQ3Grid = RQ3Grid(),
                              pipeline: PipelineConfig = PipelineConfig(), data_dir: str | None = None,
                              domain_name: str | None = None) -> ArtifactRef:
    """RQ3: should the student use the knowledge in its prompt (ICL), in its weights (SFT), or both (SFT+ICL)?

    Args:
        domain: A shipped domain (electronic, clothing, food); ignored when data_dir is given.
        data_dir: Your own data: a folder with items and bundles tables (CSV or Parquet, docs/data.md).
        domain_name: The label of data_dir's rows and artifacts (default: the folder's name).
    """
    domain, pipeline = _with_data(domain, data_dir, domain_name, pipeline)
    cells = expand(GridConfig(domains=(domain,), rqs=("rq3",), rq3=with_deployment_values("grid", grid)))
    return evaluate_cells(cells, pipeline, key=f"rq3-{domain}")


@flow(name="full-grid", flow_run_name="full-grid")
def full_grid(grid: GridConfig = GridConfig(), pipeline: PipelineConfig = PipelineConfig(),
              data_dir: str | None = None, domain_name: str | None = None) -> ArtifactRef:
    """The whole study: RQ1-RQ3 on every domain, each shared artifact computed once.

    Args:
        data_dir: Your own data in place of the shipped domains (docs/data.md); its multi-domain cells pool the
            shipped domains' knowledge with yours.
        domain_name: The label of data_dir's rows and artifacts (default: the folder's name).
    """
    grid = with_deployment_values("grid", grid)
    if data_dir is not None:
        domain, pipeline = _with_data("electronic", data_dir, domain_name, pipeline)
        rq2 = grid.rq2.model_copy(update={"accumulate_domains": (domain, *grid.rq2.accumulate_domains)})
        grid = grid.model_copy(update={"domains": (domain,), "rq2": rq2})
    else:
        pipeline = with_deployment_values("pipeline", pipeline)
    return evaluate_cells(expand(grid), pipeline, key="full-grid")
