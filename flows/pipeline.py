"""Everything below the grid that a research flow takes as its `pipeline` parameter (the UI's form): the budgets,
the data folders, extraction, retrieval, student, teacher and training. Plain config: no stage is called here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from kd_bundle.config import Domain, PatternConfig, reject_unknown_keys
from kd_bundle.evaluation.teacher_baseline import TeacherPredictConfig
from kd_bundle.knowledge.rules import RuleConfig
from kd_bundle.knowledge.thoughts import ThoughtConfig
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.retrieval import RetrievalConfig
from kd_bundle.student.training import SFTConfig
from kd_bundle.teacher import TeacherConfig


class PipelineConfig(BaseModel, frozen=True, extra="forbid"):
    """Everything below the grid: data slice, extraction, retrieval, student, teacher. Defaults = the full study."""

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, data: Any) -> Any:
        reject_unknown_keys(cls, data, "pipeline")  # nested blocks too, also those that do not forbid extras
        return data

    data_dirs: dict[Domain, str] = Field(
        {}, description="Your own data: domain label -> folder of items / bundles tables (docs/data.md). A label "
        "not listed is a shipped domain. The flows fill it from their data_dir parameter.")
    max_train_sessions: int | None = Field(
        None, ge=1, description="The knowledge pool: training sessions per domain that raw examples, patterns, "
        "retrieval and SFT draw on, and that the sampling strategies and ratios act on (None = the whole split).")
    teacher_sessions: int | None = Field(
        None, ge=1, description="The teacher's budget: pool sessions it distils into rules and thoughts (None = "
        "the whole pool). Rules are retrieved from the nearest distilled sessions for every session; thoughts "
        "exist, and reasoning SFT trains, on the distilled sessions only.")
    sft_sessions: int | None = Field(
        None, ge=1, description="Adapters train on a seeded random sample of this many pool sessions (None = the "
        "whole pool); the sampling strategies and ratios of RQ2 act on that sample for SFT cells.")
    teacher_sampling: Literal["random", "length", "diversity"] = Field(
        "diversity", description="Which pool sessions the teacher distils when its budget is smaller than the "
        "pool: diversity (k-means over the session embeddings, so that every session has a distilled neighbour "
        "near it), random, or length (PipelineConfig.length_order).")
    max_test_sessions: int | None = Field(None, ge=1, description="Test sessions per domain, length-stratified (None = 180).")
    patterns: PatternConfig = PatternConfig()
    rules: RuleConfig = RuleConfig()
    thoughts: ThoughtConfig = ThoughtConfig()
    teacher: TeacherConfig = TeacherConfig()
    teacher_rows: tuple[str, ...] = Field(
        ("none", "rules"), description="Teacher baseline rows: 'none' = zero-shot, or a format retrieved into its prompt."
    )
    teacher_predict: TeacherPredictConfig = TeacherPredictConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    icl: ICLConfig = ICLConfig()
    student: StudentConfig = StudentConfig()
    sft: SFTConfig = SFTConfig()
    sampling_seed: int = Field(0, description="Seed of every sampling strategy.")
    difficulty: Literal["teacher", "patterns"] = Field(
        "teacher", description="Difficulty sampling's score: the teacher's first-answer precision in the rule loop "
        "(the study), or the pattern baseline's precision on held-out folds (no teacher needed)."
    )
    length_order: Literal["longest", "shortest", "stratified"] = Field(
        "longest", description="Length sampling: longest sessions first, shortest first, or length-stratified."
    )
    sft_icl_prompts: Literal["match", "sft"] = Field(
        "match", description="SFT+ICL adapters: 'match' trains on prompts carrying the test prompt's formats with "
        "the ICL demonstration and line counts (one adapter per prompt format); 'sft' trains on SFTConfig.knowledge "
        "alone, shared with the SFT cell (the earlier behaviour, for comparison)."
    )


def full_pool(strategy: str, ratio: float) -> tuple[str, float]:
    """Every strategy at ratio 1.0 keeps every session: one pool, asked for once, whatever the cell's label."""
    return ("all", 1.0) if ratio >= 1.0 else (strategy, ratio)
