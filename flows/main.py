"""The main job (`make run`): every stage of the study once, on the real data, in a few minutes on 2 cores.

Non-LLM baselines on the full test split of all three domains, then RQ1 (knowledge format x ICL/SFT) on a small
slice of one domain with the embedded SmolLM2 as teacher and student. Point KD_TEACHER_BASE_URL and
`--teacher-model` at a strong model, and raise the slice, to run it for real.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from flows.baselines import BaselineRun, baselines_flow
from flows.cells import PipelineConfig
from flows.research import rq1_knowledge_format
from kd_bundle.config import DOMAINS
from kd_bundle.grid import RQ1Grid
from kd_bundle.icl import ICLConfig
from kd_bundle.results import markdown_table
from kd_bundle.rules import RuleConfig
from kd_bundle.store import ArtifactRef, read_artifact
from kd_bundle.student import SFTConfig, StudentConfig
from kd_bundle.teacher import TeacherConfig
from kd_bundle.teacher_baseline import TeacherPredictConfig

# 4 training sessions distilled by the teacher (~3 requests each), 6 test sessions (lengths 2..7). On 2 cores
# SmolLM2 answers a teacher request in ~5-15 s and prefills a 1k-token ICL prompt in ~10 s: every number here
# is sized so that the whole job stays within a few minutes (bench/README.md has the rates).
DEMO_GRID = RQ1Grid(formats=("raw", "rules"), utilizations=("icl", "sft"))
DEMO = PipelineConfig(
    max_train_sessions=4,
    max_test_sessions=6,
    rules=RuleConfig(feedback_rounds=1),
    teacher=TeacherConfig(max_tokens=128),
    teacher_rows=("none",),
    teacher_predict=TeacherPredictConfig(intents=False),
    icl=ICLConfig(demonstrations=1),  # prefill dominates on CPU: one neighbour's knowledge per prompt
    student=StudentConfig(max_new_tokens=64, batch_size=6),
    sft=SFTConfig(max_steps=3, warmup_steps=0, lora_r=8, lora_alpha=16, batch_tokens=1024, max_batch_size=4),
)


@flow(name="main")
def main_flow(domain: str = "electronic", pipeline: PipelineConfig = DEMO) -> tuple[ArtifactRef, ArtifactRef]:
    """Baselines on every domain, then RQ1 on a small slice of one."""
    return baselines_flow(BaselineRun()), rq1_knowledge_format(domain, grid=DEMO_GRID, pipeline=pipeline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.main", description=__doc__)
    parser.add_argument("--domain", choices=DOMAINS, default="electronic")
    parser.add_argument("--teacher-model", default=DEMO.teacher.model, help="model name at KD_TEACHER_BASE_URL")
    args = parser.parse_args(argv)
    pipeline = DEMO.model_copy(update={"teacher": DEMO.teacher.model_copy(update={"model": args.teacher_model})})
    baselines, rq1 = main_flow(args.domain, pipeline)
    print("\n## Non-LLM baselines, full test split\n")
    print(markdown_table(read_artifact(baselines)))
    print(f"\n## RQ1 on {args.domain}: {pipeline.max_test_sessions} test sessions, SmolLM2 teacher and student\n")
    print(markdown_table(read_artifact(rq1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
