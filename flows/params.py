"""Flow parameters: nested overrides keep the deployment's other values; a data folder becomes a domain label.

Prefect merges a run's parameters over its deployment's one top-level key at a time, so
`prefect deployment run 'rq1-knowledge-format/smoke' --params '{"pipeline": {"max_test_sessions": 3}}'`
replaced the smoke deployment's whole `pipeline` and quietly ran the multi-day full study (issue 12). A flow
passes each config parameter through `with_deployment_values`: the keys the run set win, at any depth, and
every other value comes from the deployment. Outside a deployment the value is returned unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from prefect.client.orchestration import get_client
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel

from kd_bundle.data.source import data_source

Config = TypeVar("Config", bound=BaseModel)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, mappings merged key by key; lists and scalars replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def merged_over(base: Any, value: Config) -> Config:
    """The fields set in `value` (at any depth) over the mapping `base`, validated as `value`'s model."""
    if not isinstance(base, dict):
        return value
    return type(value).model_validate(deep_merge(base, value.model_dump(mode="json", exclude_unset=True)))


def with_deployment_values(name: str, value: Config) -> Config:
    """`value` merged over the deployment's own parameter `name`, when this flow run comes from a deployment."""
    deployment_id = deployment.id
    if deployment_id is None:
        return value
    with get_client(sync_client=True) as client:
        base = client.read_deployment(deployment_id).parameters.get(name)
    return merged_over(base, value)


def with_data_dirs(config: Config, data_dirs: dict[str, str]) -> Config:
    """`config` (a PipelineConfig or BaselineRun) reading `data_dirs` as well as the folders it names already."""
    return config.model_copy(update={"data_dirs": {**config.data_dirs, **data_dirs}}) if data_dirs else config


def run_name(prefix: str) -> Callable[[], str]:
    """A flow-run name from the run's parameters: `rq1-food`, or `rq1-my-shop` for a data folder named my-shop."""

    def name() -> str:
        parameters = flow_run.parameters or {}
        try:
            label, _ = data_source(parameters.get("domain", "electronic"), parameters.get("data_dir"),
                                   parameters.get("domain_name"))
        except (ValueError, OSError):
            label = str(parameters.get("domain_name") or parameters.get("domain", "electronic"))
        return f"{prefix}-{label}"

    return name
