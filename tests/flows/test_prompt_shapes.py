"""An adapter's test prompts have the shape of its training prompts, for every kind of cell the grid has.

For each distinct (utilization, training knowledge, prompt knowledge) of the full grid, the SFT example the adapter
is trained on and the prompt it is tested with are built for the same session from the same retrieved knowledge,
through the very ICLConfigs the flows use (Plan.sft_config for training, Plan.test_prompt for the test): the two
prompts must be the same text. On 7def1df an SFT cell trained with rules in its prompts was tested without them.
"""

from __future__ import annotations

import polars as pl
import pytest

from flows.cells import Plan
from flows.pipeline import PipelineConfig
from kd_bundle.grid import GridConfig, expand, formats_of
from kd_bundle.student.icl import build_prompts, build_sft_examples
from kd_bundle.student.model import StudentConfig, load_tokenizer
from kd_bundle.student.retrieval import RETRIEVED_SCHEMA
from tests.kd_bundle.tiny_student import build_tiny_student, tiny_sessions

PER_SESSION = {"raw": "Products: {...}\nBundles: {'bundle1': ['product1', 'product2']}",
               "rules": "Rule: a case goes with its phone.",
               "thoughts": "Products: {...}\nReasoning: both protect.\nBundles: {'bundle1': ['product1', 'product2']}"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(StudentConfig(model=str(build_tiny_student(tmp_path_factory.mktemp("tiny")))))


def _retrieved(sessions: pl.DataFrame) -> pl.DataFrame:
    """Every format for every session: two neighbours' blocks (per-session formats) or three lines (patterns)."""
    rows = []
    for sid in sessions["session_id"].to_list():
        for fmt, block in PER_SESSION.items():
            rows.append((sid, fmt, [90, 91], [0.9, 0.8], [f"{block} ({fmt} {sid}a)", f"{block} ({fmt} {sid}b)"]))
        rows.append((sid, "patterns", [], [], ["Phones & Accessories", "Kitchen & Tools", "Phones & Cables"]))
    return pl.DataFrame(rows, schema=RETRIEVED_SCHEMA, orient="row")


def _cell_kinds() -> list:
    kinds = {}
    for cell in expand(GridConfig(domains=("food",))):
        kinds.setdefault((cell.utilization, cell.train_format, cell.prompt_format), cell)
    return [cell for cell in kinds.values() if cell.train_format is not None]


@pytest.mark.parametrize("mode", ["match", "sft"])
def test_every_adapter_is_tested_on_prompts_shaped_like_its_training_prompts(tokenizer, mode) -> None:
    plan = Plan(PipelineConfig(sft_icl_prompts=mode))
    sessions = tiny_sessions().with_columns(split=pl.lit("train"))
    retrieved = _retrieved(sessions)
    thoughts = sessions.select("session_id", thought=pl.lit("Both products protect the phone."))
    kinds = _cell_kinds()
    assert {c.utilization for c in kinds} == {"sft", "sft+icl"} and len(kinds) > 20
    for cell in kinds:
        sft = plan.sft_config(formats_of(cell.train_format), formats_of(cell.prompt_format))
        test = plan.test_prompt(cell)
        trained = build_sft_examples(sessions, retrieved, thoughts if sft.reasoning else None, tokenizer,
                                     sft.knowledge, sft.max_length)
        tested = build_prompts(sessions.with_columns(split=pl.lit("test")), retrieved, tokenizer, test, 4096)
        pairs = trained.join(tested, on="session_id", suffix="_test")
        assert pairs.height == sessions.height
        if mode == "sft" and cell.utilization == "sft+icl":
            # the comparison mode kept from before: the adapter never read the prompt knowledge in training
            assert set(test.formats) == set(sft.knowledge.formats) | set(formats_of(cell.prompt_format)), cell.name
            continue
        for sid, train_prompt, test_prompt in pairs.select("session_id", "prompt", "prompt_test").iter_rows():
            assert test_prompt == train_prompt, f"{cell.name}: session {sid}'s test prompt differs from training"
        if set(formats_of(cell.train_format)) & {"patterns", "rules"}:
            assert "### " in pairs["prompt_test"][0], f"{cell.name}: trained with knowledge, tested without"
