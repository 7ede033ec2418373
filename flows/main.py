"""The main job (`make run`): every stage of the study once, on the real data, on a 60-session slice, on 2 cores.

Non-LLM baselines on the full test split of all three domains, then one research question on a small slice of
one domain with the embedded SmolLM2 as teacher and student: RQ1 (knowledge format x ICL/SFT, the default) or,
with `--rq rq3`, RQ3 (ICL vs SFT vs SFT+ICL, training and prompt knowledge crossed). Point KD_TEACHER_BASE_URL
and `--teacher-model` at a strong model, and raise the slice, to run it for real.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from prefect import flow

from flows.baselines import BaselineRun, baselines_flow
from flows.pipeline import PipelineConfig
from flows.prefect_server import guard_temporary_server
from flows.research import rq1_knowledge_format, rq3_knowledge_utilization
from kd_bundle.cli_errors import run_cli
from kd_bundle.config import DOMAINS, ShippedDomain
from kd_bundle.data.source import add_data_arguments, data_source
from kd_bundle.evaluation.results import markdown_table
from kd_bundle.evaluation.teacher_baseline import TeacherPredictConfig
from kd_bundle.grid import RQ1Grid, RQ3Grid
from kd_bundle.knowledge.rules import RuleConfig
from kd_bundle.store import ArtifactRef, read_artifact
from kd_bundle.student.icl import ICLConfig
from kd_bundle.student.model import StudentConfig
from kd_bundle.student.training import SFTConfig

# Two budgets. The knowledge pool is the whole training split (623 Electronic sessions): raw examples and patterns
# cost no teacher call, so ICL retrieves from all of them and Apriori mines all of them. The teacher distils 8 of
# them (AICL's loop with one feedback round, ~6 requests each), chosen for coverage, and every session's rules come
# from its nearest distilled neighbours. Adapters train one epoch on 150 pool sessions (each seen once), validated
# before the first step and every 16 steps by decoding 20 validation sessions, keeping the best step: decoding is
# what validation costs (~3 s a session with rules prompts), so the demo measures the base, the middle and the end
# of a run. 60 test sessions. On 2 cores the grammar-held SmolLM2 answers 0.7-1 zero-shot sessions/s and ~0.3 ICL
# sessions/s, and trains ~180 tokens/s in fp32, ~270 with bf16 autocast where the CPU has it (bench/README.md);
# what each part costs is in the README.
DEMO_GRID = RQ1Grid(formats=("raw", "rules"), utilizations=("icl", "sft"))
# RQ3 on the same two formats: its ICL and SFT cells are RQ1's (shared, cached), SFT+ICL crosses them 2 x 2,
# because the study found that the alignment of training and prompt knowledge matters.
DEMO_RQ3_GRID = RQ3Grid(utilizations=("icl", "sft", "sft+icl"), train_formats=("raw", "rules"),
                        prompt_formats=("raw", "rules"))
DEMO = PipelineConfig(
    teacher_sessions=8,
    sft_sessions=150,
    # 60 test sessions stratified by length like the AICL split (lengths 2..10): enough to read a difference
    # of a few points; --test-sessions 180 runs the whole split.
    max_test_sessions=60,
    rules=RuleConfig(feedback_rounds=1),
    teacher_rows=("none",),
    teacher_predict=TeacherPredictConfig(intents=False),
    # Prefill dominates on CPU: one neighbour's knowledge per prompt. The student's answers are held to the
    # session's grammar (StudentConfig.decoding), so every answer parses and stops at its closing brace.
    icl=ICLConfig(demonstrations=1),
    student=StudentConfig(max_new_tokens=96, batch_size=4),
    sft=SFTConfig(epochs=1.0, learning_rate=3e-4, lora_r=8, lora_alpha=16, batch_tokens=2048, max_batch_size=16,
                  valid_sessions=20, eval_every=16, patience=2),
)


@flow(name="main")
def main_flow(domain: ShippedDomain = "electronic", rq: Literal["rq1", "rq3"] = "rq1", pipeline: PipelineConfig = DEMO,
              data_dir: str | None = None, domain_name: str | None = None) -> tuple[ArtifactRef, ArtifactRef]:
    """Baselines on every domain (or on your data), then RQ1 or RQ3 on a small slice of one (or of yours).

    Args:
        domain: A shipped domain (electronic, clothing, food); ignored when data_dir is given.
        rq: rq1 (knowledge format x ICL/SFT) or rq3 (ICL, SFT, SFT+ICL).
        pipeline: Budgets, student, teacher and training settings.
        data_dir: Your own data: a folder with items and bundles tables (CSV or Parquet, docs/data.md).
        domain_name: The label of data_dir's rows and artifacts (default: the folder's name).
    """
    baselines = baselines_flow(BaselineRun(), data_dir=data_dir, domain_name=domain_name)
    research = rq3_knowledge_utilization if rq == "rq3" else rq1_knowledge_format
    grid = DEMO_RQ3_GRID if rq == "rq3" else DEMO_GRID
    return baselines, research(domain, grid=grid, pipeline=pipeline, data_dir=data_dir, domain_name=domain_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.main", description=__doc__)
    parser.add_argument("--domain", choices=DOMAINS, default="electronic")
    parser.add_argument("--rq", choices=("rq1", "rq3"), default="rq1",
                        help="rq1: raw/rules x ICL/SFT; rq3: ICL, SFT and SFT+ICL with raw/rules knowledge crossed")
    parser.add_argument("--teacher-model", default=DEMO.teacher.model, help="model name at KD_TEACHER_BASE_URL")
    parser.add_argument("--test-sessions", type=int, choices=range(9, 181), metavar="9..180",
                        default=DEMO.max_test_sessions, help="length-stratified test sessions; 180 = the whole split")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    label, _ = data_source(args.domain, args.data, args.domain_name)  # a bad folder or label fails before any work
    guard_temporary_server()  # a killed run leaves no Prefect server behind
    pipeline = DEMO.model_copy(update={"teacher": DEMO.teacher.model_copy(update={"model": args.teacher_model}),
                                       "max_test_sessions": args.test_sessions})
    baselines, cells = main_flow(args.domain, args.rq, pipeline, args.data, args.domain_name)
    print("\n## Non-LLM baselines, full test split\n")
    print(markdown_table(read_artifact(baselines)))
    print(f"\n## {args.rq.upper()} on {label}: {pipeline.max_test_sessions} test sessions, "
          f"teacher {pipeline.teacher.model}, student {pipeline.student.model}\n")
    print(markdown_table(read_artifact(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("python -m flows.main", main))
