"""Nested parameter overrides keep the deployment's other values.

Prefect merges a run's parameters over its deployment's one top-level key at a time, so
`prefect deployment run 'rq1-knowledge-format/smoke' --params '{"pipeline": {"max_test_sessions": 3}}'`
replaced the smoke deployment's whole `pipeline` and quietly ran the multi-day full study (issue 12). A flow
passes each config parameter through `with_deployment_values`: the keys the run set win, at any depth, and
every other value comes from the deployment. Outside a deployment the value is returned unchanged.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.client.orchestration import get_client
from prefect.runtime import deployment
from pydantic import BaseModel

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
