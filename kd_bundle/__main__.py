"""`python -m kd_bundle <command> ...`: each command lives in the module of its stage (lazy import keeps start-up fast)."""

from __future__ import annotations

import importlib
import sys

from kd_bundle.cli_errors import run_cli

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "score": "kd_bundle.evaluation.metrics:cli",
    "distill": "kd_bundle.knowledge.distill:cli",  # distill {rules,thoughts,baseline} through the teacher
    "teacher-server": "kd_bundle.teacher.server:cli",  # start/stop/status of the embedded teacher; usage export
    "report": "kd_bundle.report.document:cli",
    "convert": "kd_bundle.data.bundlerec:cli",  # convert bundlerec SRC OUT: a raw release -> the exchange tables
    "store": "kd_bundle.store_admin:cli",  # store verify [--repair]; store gc [--dry-run]
    "export": "kd_bundle.report.student_card:cli",  # a trained adapter -> a standalone merged model folder with a card
    "serve": "kd_bundle.student.serve:cli",  # an exported student behind an OpenAI-compatible endpoint
    "generate": "kd_bundle.student.apply:cli",  # a student's bundles for sessions without bundles
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print("usage: python -m kd_bundle {" + ",".join(sorted(COMMANDS)) + "} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module_name, function_name = COMMANDS[argv[0]].split(":")
    command = getattr(importlib.import_module(module_name), function_name)
    return run_cli(f"python -m kd_bundle {argv[0]}", lambda: command(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
