"""Deployment parameters: a misspelt key is an error, and a nested override keeps the deployment's other values."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from flows.params import deep_merge, merged_over
from flows.pipeline import PipelineConfig
from kd_bundle.config import BaselineConfig, DataConfig, PatternConfig
from kd_bundle.grid import GridConfig, RQ1Grid
from kd_bundle.knowledge.rules import RuleConfig
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.training import SFTConfig
from kd_bundle.teacher.config import TeacherConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = {d["name"] + ":" + d["entrypoint"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


@pytest.mark.parametrize("key", list(DEPLOYMENTS))
def test_every_deployment_parameter_is_known_to_its_flow(key):
    deployment = DEPLOYMENTS[key]
    _flow(deployment["entrypoint"]).validate_parameters(deployment.get("parameters") or {})  # raises on a stray key


@pytest.mark.parametrize("model, data, where", [
    (PipelineConfig, {"max_test_sesions": 3}, "pipeline: unknown key(s) ['max_test_sesions']"),
    (PipelineConfig, {"teacher": {"modle": "gpt"}}, "pipeline.teacher: unknown key(s) ['modle']"),
    (PipelineConfig, {"student": {"batch_sise": 2}}, "pipeline.student: unknown key(s) ['batch_sise']"),
    (PipelineConfig, {"icl": {"demos": 2}}, "demos"),
    (DataConfig, {"domian": "food"}, "domian"),
    (PatternConfig, {"min_suport": 0.1}, "min_suport"),
    (BaselineConfig, {"metod": "category"}, "metod"),
    (RQ1Grid, {"format": ["raw"]}, "format"),
    (GridConfig, {"rq1": {"utilisations": ["icl"]}}, "utilisations"),
    # the library's own configs, for callers outside the flows (python -m kd_bundle.student, notebooks)
    (StudentConfig, {"batch_sise": 2}, "batch_sise"),
    (SFTConfig, {"learning_rte": 1e-4}, "learning_rte"),
    (RuleConfig, {"feedback_round": 2}, "feedback_round"),
    (TeacherConfig, {"temprature": 0.5}, "temprature"),
])  # fmt: skip
def test_misspelt_keys_are_refused(model, data, where):
    with pytest.raises(ValidationError, match=where.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        model.model_validate(data)


def test_misspelt_key_in_a_deployment_run_is_refused_by_the_flow():
    smoke = DEPLOYMENTS["smoke:flows/research.py:rq1_knowledge_format"]
    with pytest.raises(Exception, match="max_test_sesions"):
        _flow(smoke["entrypoint"]).validate_parameters({**smoke["parameters"], "pipeline": {"max_test_sesions": 3}})


def test_nested_override_keeps_the_smoke_deployments_other_values():
    smoke = DEPLOYMENTS["smoke:flows/research.py:rq1_knowledge_format"]["parameters"]["pipeline"]
    # What the flow receives after Prefect's top-level merge of `--params '{"pipeline": {...}}'`:
    run_value = PipelineConfig.model_validate({"max_test_sessions": 3, "student": {"batch_size": 2}})
    merged = merged_over(smoke, run_value)
    assert merged.max_test_sessions == 3 and merged.student.batch_size == 2  # the run's keys win
    assert merged.max_train_sessions == smoke["max_train_sessions"] == 6  # the rest stays the smoke run
    assert merged.teacher_rows == ()
    assert merged.student.max_new_tokens == 64 and merged.sft.max_steps == 2 and merged.icl.demonstrations == 1
    assert merged == PipelineConfig.model_validate(deep_merge(smoke, {"max_test_sessions": 3,
                                                                      "student": {"batch_size": 2}}))
    # No override: the deployment's value, untouched; no deployment: the value as given.
    assert merged_over(smoke, PipelineConfig.model_validate(smoke)) == PipelineConfig.model_validate(smoke)
    assert merged_over(None, run_value) is run_value


def test_deep_merge_replaces_lists_and_merges_mappings():
    assert deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2}) == {
        "a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
