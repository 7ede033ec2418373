"""Apply a student to sessions without bundles, as the grid applies it to test sessions.

The same functions as the grid's student stage (tasks/student.py): knowledge retrieved by `retrieval` for each new
session from the nearest training sessions, prompts from `icl.build_prompts`, answers under the session's grammar
by `generate.predict_bundles`. New sessions join the retrieval frame in the "test" split (queries, never
retrieved from) under fresh ids, so they can share ids with the training sessions; their own ids come back.

Generation runs `progress_every` sessions at a time so the terminal hears how far it is. The set-up of
`generate.predict_sessions` (the reasoning student's prefill) is repeated here; the prompt budget is generate's own.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from kd_bundle.config import DOMAINS, DataConfig, PatternConfig, settings
from kd_bundle.data.checks import DataError
from kd_bundle.data.new_sessions import read_new_sessions
from kd_bundle.data.sessions import SESSION_COLUMNS, load_sessions
from kd_bundle.evaluation.predictions import write_predictions_jsonl
from kd_bundle.store import ArtifactMissing, read_artifact
from kd_bundle.student.choice import ChosenStudent, choose_student
from kd_bundle.student.generate import adapter_reasons, predict_bundles, prompt_budget
from kd_bundle.student.icl import REASONING_MARKER, PromptTooLong, build_prompts
from kd_bundle.student.model import StudentModelError, load_student
from kd_bundle.student.retrieval import RetrievalConfig, build_index, embed_sessions, retrieve_knowledge

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (sessions done, total, seconds since generation started)
DISTILLED = ("rules", "thoughts")  # formats only the teacher makes: from a results row's stored pools


def training_sessions(source: str | None, chosen: ChosenStudent, data_root: Path) -> pl.DataFrame | None:
    """The training sessions retrieval indexes: `--train` (a domain name or a folder of exchange tables), else the
    chosen row's raw pool, else its domain; None when the student's prompt needs no knowledge."""
    if not chosen.icl.formats:
        return None
    if source is not None:
        cfg = DataConfig(domain=source) if source in DOMAINS else DataConfig(custom_dir=source)
        if cfg.custom_dir and not Path(source).is_dir():
            raise DataError(f"--train {source}: neither a domain {list(DOMAINS)} nor a folder of exchange tables")
        frame = load_sessions(cfg, data_root)
    elif "raw" in chosen.pools:
        frame = _stored(chosen, "raw")
    elif chosen.domain in DOMAINS:
        frame = load_sessions(DataConfig(domain=chosen.domain), data_root)
    else:
        raise DataError(f"the student's prompt carries {list(chosen.icl.formats)}: give --train (a domain or a folder "
                        "of exchange tables) for the training sessions to retrieve from")
    train = frame.filter(pl.col("split") == "train").select(SESSION_COLUMNS)
    if train.height == 0:
        raise DataError(f"--train {source}: no training sessions (split 'train') to retrieve knowledge from")
    return train


def knowledge_pools(chosen: ChosenStudent, train: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """format -> pool frame for every format of the prompt: a row's stored pool, or made from `train` (raw examples
    are the sessions themselves; patterns are mined from them as the grid mines them)."""
    from kd_bundle.knowledge.patterns import mine_patterns

    pools = {}
    for fmt in chosen.icl.formats:
        if fmt in chosen.pools:
            pools[fmt] = _stored(chosen, fmt)
        elif fmt == "raw":
            pools[fmt] = train
        elif fmt == "patterns":
            pools[fmt] = mine_patterns(train, PatternConfig())
        elif fmt in DISTILLED:
            raise DataError(f"the prompt carries {fmt}, which only the teacher distils: choose the student with "
                            "--student best:RESULTS.parquet, whose row records the pool, or use raw / patterns")
        else:
            raise DataError(f"unknown knowledge format {fmt!r}; expected raw, patterns, rules or thoughts")
    return pools


def retrieve_for(new: pl.DataFrame, train: pl.DataFrame, pools: dict[str, pl.DataFrame],
                 cfg: RetrievalConfig) -> pl.DataFrame:
    """Each new session's knowledge from its nearest training sessions (retrieval.RETRIEVED_COLUMNS, the new ids)."""
    offset = int(train["session_id"].max()) + 1
    queries = new.with_columns(pl.col("session_id") + offset, split=pl.lit("test"))
    frame = pl.concat([train, queries.select(SESSION_COLUMNS)], how="vertical_relaxed")
    embeddings = embed_sessions(frame, cfg)
    retrieved = retrieve_knowledge(frame, embeddings, build_index(embeddings, frame), pools, cfg)
    return retrieved.filter(pl.col("session_id") >= offset).with_columns(pl.col("session_id") - offset)


def generate_bundles(new: pl.DataFrame, chosen: ChosenStudent, retrieved: pl.DataFrame | None,
                     progress_every: int = 10, progress: Progress | None = None) -> pl.DataFrame:
    """The chosen student's predictions (PREDICTION_COLUMNS) for every session of `new`, `progress_every` at a time."""
    student, icl = chosen.student, chosen.icl
    reasoning = adapter_reasons(chosen.adapter)
    if reasoning and not REASONING_MARKER.startswith(icl.prefill.strip()):
        icl = icl.model_copy(update={"prefill": ""})  # as predict_sessions: the grammar owns the answer
    model, tokenizer = load_student(student, chosen.adapter)
    try:
        budget = prompt_budget(model, student, reasoning)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    try:
        prompts = build_prompts(new, retrieved, tokenizer, icl, budget)
    except PromptTooLong as exc:
        raise DataError(f"a session is too long for the student: {exc}") from exc
    started, frames = time.perf_counter(), []
    ids = new["session_id"].to_list()
    for start in range(0, len(ids), progress_every):
        chunk = ids[start : start + progress_every]
        part = new.filter(pl.col("session_id").is_in(chunk))
        frames.append(predict_bundles(part, prompts.filter(pl.col("session_id").is_in(chunk)), model, tokenizer,
                                      student, reasoning))
        if progress is not None:
            progress(start + len(chunk), len(ids), time.perf_counter() - started)
    return pl.concat(frames).sort("session_id")


def cli(argv: list[str]) -> int:
    """`python -m kd_bundle generate`: bundles for new sessions as the predictions JSON Lines the score CLI reads."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and bad flags; the dispatcher wants a code
        return int(exc.code or 0)
    new = read_new_sessions(args.sessions)
    chosen = choose_student(args.student, args.model)
    if args.knowledge:
        if chosen.adapter is not None and tuple(args.knowledge) != chosen.icl.formats:
            raise DataError(f"--knowledge {','.join(args.knowledge)}: the adapter's prompts carry "
                            f"{list(chosen.icl.formats) or 'no knowledge'} (as in its training); leave --knowledge out")
        chosen = chosen.model_copy(update={"icl": chosen.icl.model_copy(update={"formats": tuple(args.knowledge)})})
    updates = {"intents": args.intents, **{key: value for key, value in (("batch_size", args.batch_size),
               ("max_new_tokens", args.max_new_tokens)) if value is not None}}
    chosen = chosen.model_copy(update={"student": chosen.student.model_copy(update=updates)})
    _say(f"student: {chosen.description}; prompt knowledge: {list(chosen.icl.formats) or 'none'}")
    train = training_sessions(args.train, chosen, settings().data_root)
    retrieved = None
    if train is not None:
        pools = knowledge_pools(chosen, train)
        _say(f"retrieving {list(pools)} for {new.height} sessions from {train.height} training sessions")
        retrieved = retrieve_for(new, train, pools, RetrievalConfig(method=args.retrieval))
    try:
        predictions = generate_bundles(new, chosen, retrieved, args.progress_every, _report_progress)
    except StudentModelError as exc:
        raise DataError(str(exc)) from exc
    write_predictions_jsonl(predictions, args.out)
    failed = predictions["bundles"].null_count()
    _say(f"wrote {args.out}: {predictions.height} sessions, {failed} of them without a parsable answer (bundles null)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kd_bundle generate", description="Bundles for sessions without bundles, by a student.")
    parser.add_argument("--student", required=True,
                        help="'base', an adapter folder, or best:RESULTS.parquet[:metric] (default metric valid_loss).")
    parser.add_argument("--sessions", required=True, type=Path,
                        help="items table (.csv or .parquet): session_id, position, item_id, title[, category].")
    parser.add_argument("--out", required=True, type=Path, help="predictions JSON Lines (the score CLI's format).")
    parser.add_argument("--intents", action="store_true", help="each bundle with a 1-5 word intent.")
    parser.add_argument("--knowledge", type=lambda text: [f for f in text.split(",") if f],
                        help="ICL formats for the base student, comma-joined: raw, patterns (rules, thoughts: from a "
                        "best: row).")
    parser.add_argument("--train", help="training sessions to retrieve from: a domain name or a folder of exchange "
                        "tables (default: the best row's pool or domain).")
    parser.add_argument("--model", help="the base model's name or folder (default: the student's own).")
    parser.add_argument("--retrieval", default="auto", choices=["auto", "minilm", "tfidf"])
    parser.add_argument("--batch-size", type=_positive, default=None, help="prompts generated together.")
    parser.add_argument("--max-new-tokens", type=_positive, default=None, help="cap on each answer's tokens.")
    parser.add_argument("--progress-every", type=_positive, default=10,
                        help="one progress line per this many sessions.")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _report_progress(done: int, total: int, seconds: float) -> None:
    _say(f"{done}/{total} sessions, {done / seconds if seconds > 0 else 0.0:.2f} sessions/s")


def _say(line: str) -> None:
    print(f"generate: {line}", file=sys.stderr, flush=True)


def _stored(chosen: ChosenStudent, fmt: str) -> pl.DataFrame:
    try:
        return read_artifact(chosen.pools[fmt])
    except ArtifactMissing as exc:
        raise DataError(f"the chosen row's {fmt} pool is not in this store (KD_STORE): {exc}") from exc
