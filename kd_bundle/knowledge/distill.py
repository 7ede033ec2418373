"""`python -m kd_bundle distill {rules,thoughts,baseline}`: teacher knowledge from the command line, without Prefect.

    python -m kd_bundle distill rules    --domain electronic --max-train-sessions 20
    python -m kd_bundle distill thoughts --domain electronic --max-train-sessions 20
    python -m kd_bundle distill baseline --domain electronic --max-test-sessions 18 [--with-rules]

The teacher is KD_TEACHER_BASE_URL (+ KD_TEACHER_API_KEY). With the default model `smollm2` on a loopback URL where
nothing listens, the embedded llm-katan server is started at the first request not already cached, and stopped after the run. Every answer is cached
the moment it arrives (<store>/teacher/requests.sqlite): a killed run, started again, sends only missing requests.
Artifacts land in the store; their refs and the request counts are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

import polars as pl

from kd_bundle.config import DOMAINS, settings
from kd_bundle.data.sessions import DataError, load_sessions, split_of
from kd_bundle.data.source import add_data_arguments, data_config
from kd_bundle.evaluation import teacher_baseline
from kd_bundle.knowledge import rules, thoughts
from kd_bundle.models import SMOLLM2
from kd_bundle.store import write_artifact
from kd_bundle.teacher import ClientSettings, TeacherClient, TeacherConfig, TeacherError
from kd_bundle.teacher.server import EmbeddedTeacher

log = logging.getLogger("kd_bundle.teacher")


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        return _distill(args)
    except (TeacherError, DataError) as exc:  # the messages name the endpoint or file and what to do; no traceback
        print(f"python -m kd_bundle distill {args.what}: error: {exc}", file=sys.stderr)
        return 2


def _distill(args: argparse.Namespace) -> int:
    data = data_config(args, max_train_sessions=args.max_train_sessions, max_test_sessions=args.max_test_sessions)
    args.domain = data.domain  # the label every row and artifact of this run carries
    sessions = load_sessions(data, settings().data_root)
    teacher = TeacherConfig(model=args.model, temperature=args.temperature, max_tokens=args.max_tokens)
    overrides = {"max_concurrency": args.concurrency} if args.concurrency else {}
    embedded = teacher.model == SMOLLM2 and not args.no_server
    server = EmbeddedTeacher(teacher.model) if embedded else contextlib.nullcontext()
    started = time.monotonic()
    with server, TeacherClient(teacher, ClientSettings(**overrides),
                               before_send=server.ensure if embedded else None) as client:
        refs = _run(args, sessions, teacher, client)
        refs["teacher_usage"] = write_artifact(client.usage_frame(), "teacher_usage")
        progress = client.progress(args.what)
    for kind, ref in refs.items():
        print(f"{kind}: {ref.path()} ({ref.rows} rows)")
    print(f"requests: {progress.requests} ({progress.sent} sent, {progress.cached} from cache), "
          f"{progress.tokens} tokens, {progress.failures} failures, {progress.truncated} cut at max_tokens, "
          f"{time.monotonic() - started:.1f} s")
    return 0


def _run(args: argparse.Namespace, sessions: pl.DataFrame, teacher: TeacherConfig, client: TeacherClient) -> dict:
    if args.what == "rules":
        session_rules, consolidated = rules.distill_rules(
            sessions, args.domain, rules.RuleConfig(feedback_rounds=args.feedback_rounds), client)
        print(consolidated.select("support", "rule").head(10))
        return {"session_rules": write_artifact(session_rules, "session_rules"), "rules": write_artifact(consolidated, "rules")}
    if args.what == "thoughts":
        frame = thoughts.distill_thoughts(sessions, args.domain, thoughts.ThoughtConfig(), client)
        return {"thoughts": write_artifact(frame, "thoughts")}
    return _baseline(args, sessions, teacher, client)


def _baseline(args: argparse.Namespace, sessions: pl.DataFrame, teacher: TeacherConfig, client: TeacherClient) -> dict:
    from kd_bundle.evaluation.metrics import score_predictions
    from kd_bundle.evaluation.results import CellLabels, markdown_table, scored_row

    test = split_of(sessions, "test")
    knowledge, knowledge_format = None, "none"
    if args.with_rules:  # the domain's consolidated rules in front of every test prompt
        _, consolidated = rules.distill_rules(sessions, args.domain, rules.RuleConfig(feedback_rounds=args.feedback_rounds), client)
        lines = consolidated["rule"].head(args.max_rule_lines).to_list()
        knowledge = pl.DataFrame({"session_id": test["session_id"], "knowledge": [["\n".join(f"- {r}" for r in lines)]] * test.height})
        knowledge_format = "rules"
    tokens_before = client.progress().tokens  # the row counts the prediction requests, not the rules behind them
    predictions = teacher_baseline.predict_bundles(test, teacher_baseline.TeacherPredictConfig(), client, knowledge)
    tokens = client.progress().tokens - tokens_before
    predictions_ref = write_artifact(predictions, "predictions")
    labels = CellLabels(domain=args.domain, method="teacher", knowledge_format=knowledge_format, model=teacher.model,
                        utilization="icl" if knowledge is not None else "none", teacher_tokens=tokens)
    row = scored_row(labels, score_predictions(predictions, test), predictions_ref.sha256)
    print(markdown_table(row))
    return {"predictions": predictions_ref, "results": write_artifact(row, "results")}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kd_bundle distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["rules", "thoughts", "baseline"])
    parser.add_argument("--domain", choices=DOMAINS, default="electronic")
    add_data_arguments(parser)
    parser.add_argument("--max-train-sessions", type=int, default=None, help="first N training sessions (default all)")
    parser.add_argument("--max-test-sessions", type=int, default=None, help="baseline: N stratified test sessions")
    parser.add_argument("--model", default=TeacherConfig().model, help="model name at the endpoint")
    parser.add_argument("--temperature", type=float, default=TeacherConfig().temperature)
    parser.add_argument("--max-tokens", type=int, default=TeacherConfig().max_tokens)
    parser.add_argument("--feedback-rounds", type=int, default=rules.RuleConfig().feedback_rounds)
    parser.add_argument("--concurrency", type=int, default=None, help="threads (default KD_TEACHER_MAX_CONCURRENCY or 2)")
    parser.add_argument("--with-rules", action="store_true", help="baseline: put the consolidated rules in the prompt")
    parser.add_argument("--max-rule-lines", type=int, default=10, help="baseline --with-rules: rules shown")
    parser.add_argument("--no-server", action="store_true", help="never start the embedded server")
    return parser
