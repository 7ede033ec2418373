"""Non-LLM baselines on the real domains: load -> mine patterns -> predict -> score -> one results table.

The positional references (first two products, last two, the whole session) sit beside them: a score a rule
reading no title reaches is the floor any knowledge has to clear."""

from __future__ import annotations

import argparse
import sys

from prefect import flow
from pydantic import BaseModel, Field

from flows.prefect_server import guard_temporary_server
from kd_bundle.cli_errors import run_cli
from kd_bundle.config import DOMAINS, BaselineConfig, DataConfig, Domain, PatternConfig, settings
from kd_bundle.evaluation.baselines import BASELINE_METHODS, baseline_label
from kd_bundle.evaluation.results import CellLabels, markdown_table
from kd_bundle.store import ArtifactRef, read_artifact
from tasks.data import load_sessions
from tasks.evaluation import collect_results, predict_baseline, publish_results, score_predictions
from tasks.knowledge import mine_patterns


class BaselineRun(BaseModel, frozen=True, extra="forbid"):
    domains: tuple[Domain, ...] = Field(DOMAINS, description="Domains to score.")
    max_train_sessions: int | None = Field(None, ge=1, description="Training sessions mined (None = all).")
    max_test_sessions: int | None = Field(None, ge=1, description="Test sessions scored (None = all 180).")
    patterns: PatternConfig = PatternConfig()


@flow(name="baselines")
def baselines_flow(run: BaselineRun = BaselineRun()) -> ArtifactRef:
    """How far do non-LLM bundlers get? The pattern detector of SIGIR'22 and grouping by leaf category."""
    rows = []
    for domain in run.domains:
        data = DataConfig(domain=domain, max_train_sessions=run.max_train_sessions, max_test_sessions=run.max_test_sessions)
        all_sessions = load_sessions(data, settings().data_root)
        patterns = mine_patterns(all_sessions, run.patterns)
        for method in BASELINE_METHODS:
            knowledge = patterns if method == "pattern" else None  # so the other bundlers never wait on mining
            predictions = predict_baseline(all_sessions, knowledge, BaselineConfig(method=method))
            labels = CellLabels(domain=domain, method=baseline_label(method))
            rows.append(score_predictions(all_sessions, predictions, labels))
    table = collect_results(rows)
    publish_results(table, "baselines", settings().results_dir)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.baselines", description=baselines_flow.__doc__)
    parser.add_argument("--domain", choices=DOMAINS, action="append", help="repeatable; default: all three")
    parser.add_argument("--max-test-sessions", type=int)
    args = parser.parse_args(argv)
    guard_temporary_server()  # a killed run leaves no Prefect server behind
    run = BaselineRun(domains=tuple(args.domain or DOMAINS), max_test_sessions=args.max_test_sessions)
    print(markdown_table(read_artifact(baselines_flow(run))))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("python -m flows.baselines", main))
