"""Non-LLM baselines on the real domains (or your own data): load -> mine patterns -> predict -> score -> one table.

The positional references (first two products, last two, the whole session) sit beside them: a score a rule
reading no title reaches is the floor any knowledge has to clear."""

from __future__ import annotations

import argparse
import sys

from prefect import flow
from pydantic import BaseModel, Field

from flows.params import with_data_dirs
from flows.prefect_server import guard_temporary_server
from kd_bundle.cli_errors import run_cli
from kd_bundle.config import DOMAINS, BaselineConfig, DataConfig, Domain, PatternConfig, settings
from kd_bundle.data.source import add_data_arguments, data_source
from kd_bundle.evaluation.baselines import BASELINE_METHODS, baseline_label
from kd_bundle.evaluation.results import CellLabels, markdown_table
from kd_bundle.store import ArtifactRef, read_artifact
from tasks.data import load_sessions
from tasks.evaluation import collect_results, predict_baseline, publish_results, score_predictions
from tasks.knowledge import mine_patterns


class BaselineRun(BaseModel, frozen=True, extra="forbid"):
    domains: tuple[Domain, ...] = Field(DOMAINS, description="Domains to score.")
    data_dirs: dict[Domain, str] = Field(
        {}, description="Your own data: domain label -> folder of items / bundles tables; others are shipped.")
    max_train_sessions: int | None = Field(None, ge=1, description="Training sessions mined (None = all).")
    max_test_sessions: int | None = Field(None, ge=1, description="Test sessions scored (None = all 180).")
    patterns: PatternConfig = PatternConfig()


@flow(name="baselines")
def baselines_flow(run: BaselineRun = BaselineRun(), data_dir: str | None = None,
                   domain_name: str | None = None) -> ArtifactRef:
    """How far do non-LLM bundlers get? The pattern detector of SIGIR'22 and grouping by leaf category.

    Args:
        run: Domains, slices and the pattern miner's settings.
        data_dir: Your own data (items and bundles tables, docs/data.md) in place of run.domains.
        domain_name: The label of data_dir's rows (default: the folder's name).
    """
    if data_dir is not None or domain_name is not None:
        label, data_dirs = data_source("electronic", data_dir, domain_name)
        run = with_data_dirs(run, data_dirs).model_copy(update={"domains": (label,)})
    rows = []
    for domain in run.domains:
        data = DataConfig(domain=domain, custom_dir=run.data_dirs.get(domain),
                          max_train_sessions=run.max_train_sessions, max_test_sessions=run.max_test_sessions)
        all_sessions = load_sessions(data, settings().data_root)
        patterns = mine_patterns(all_sessions, run.patterns)
        for method in BASELINE_METHODS:
            knowledge = patterns if method == "pattern" else None  # so the other bundlers never wait on mining
            predictions = predict_baseline(all_sessions, knowledge, BaselineConfig(method=method))
            labels = CellLabels(domain=domain, method=baseline_label(method))
            rows.append(score_predictions(all_sessions, predictions, labels))
    table = collect_results(rows)
    publish_results(table, "baselines", settings().results_dir, run.data_dirs)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.baselines", description=baselines_flow.__doc__)
    parser.add_argument("--domain", choices=DOMAINS, action="append", help="repeatable; default: all three")
    parser.add_argument("--max-test-sessions", type=int)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    guard_temporary_server()  # a killed run leaves no Prefect server behind
    run = BaselineRun(domains=tuple(args.domain or DOMAINS), max_test_sessions=args.max_test_sessions)
    print(markdown_table(read_artifact(baselines_flow(run, args.data, args.domain_name))))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("python -m flows.baselines", main))
