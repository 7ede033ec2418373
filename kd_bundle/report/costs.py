"""What a results row cost and how much knowledge it used: the cost and quantity columns of kd_bundle.evaluation.results.

Teacher cost is read, never estimated: rules and thoughts frames keep every conversation turn, so the request key of
each teacher answer is recomputed exactly as kd_bundle.teacher.TeacherClient.complete built it (model, the
messages before that answer, generation settings) and its usage row is looked up in the request cache. An answer
missing from the cache (cache deleted, other store) is counted in `missing_requests` and adds nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl

from kd_bundle.teacher import TeacherConfig, request_key

# results columns read from an adapter's stats
TRAIN_COLUMNS = ["train_seconds", "train_tokens", "train_examples", "train_steps", "best_step", "valid_loss",
                 "valid_strict_precision", "train_losses", "valid_steps", "valid_losses", "valid_precisions"]
TRAIN_STATS_SUFFIX = ".train_stats.json"  # beside a stored adapter folder, written by tasks.student.train_adapter
_TOKEN = re.compile(r"\w+|[^\w\s]")


def knowledge_tokens(texts: list[str | None]) -> int:
    """Word and punctuation tokens: a count that does not depend on which student's tokenizer reads them."""
    return sum(len(_TOKEN.findall(t)) for t in texts if t)


def knowledge_quantity(kind: str, frame: pl.DataFrame) -> dict[str, int]:
    """QUANTITY_COLUMNS of one knowledge frame, by its artifact kind: "sessions" (raw), "patterns",
    "session_rules" or "thoughts". Unknown kinds are an error naming the kind."""
    zero = dict.fromkeys(("train_sessions", "teacher_sessions", "pattern_lines", "rule_count", "thought_count", "knowledge_tokens",
                          "knowledge_failed", "feedback_rounds"), 0)
    if kind == "sessions":
        train = frame.filter(pl.col("split") == "train") if "split" in frame.columns else frame
        titles = [" ".join(t) for t in train["titles"].to_list() if t] if "titles" in train.columns else []
        return {**zero, "train_sessions": train.height, "knowledge_tokens": knowledge_tokens(titles)}
    if kind == "patterns":
        itemsets = frame.filter(pl.col("kind") == "itemset") if "kind" in frame.columns else frame
        text = [" ".join(c) for c in itemsets["categories"].to_list()] if "categories" in frame.columns else []
        return {**zero, "pattern_lines": itemsets.height, "knowledge_tokens": knowledge_tokens(text)}
    failed = frame.filter(pl.col("error").is_not_null()).height if "error" in frame.columns else 0
    base = {**zero, "train_sessions": frame.height, "teacher_sessions": frame.height, "knowledge_failed": failed,
            "knowledge_tokens": knowledge_tokens(frame["knowledge"].to_list())}
    if kind == "session_rules":
        return {**base, "rule_count": int(frame["rules"].list.len().sum() or 0),
                "feedback_rounds": int(frame["feedback_rounds"].sum() or 0)}
    if kind == "thoughts":
        return {**base, "thought_count": frame.filter(pl.col("thought").is_not_null()).height}
    raise ValueError(f"knowledge_quantity: unknown knowledge kind {kind!r} "
                     "(expected sessions, patterns, session_rules or thoughts)")


def add_quantities(parts: list[dict[str, int]]) -> dict[str, int]:
    """Quantities of several formats in one row; training sessions are the largest pool's, not a sum."""
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = (max(total.get(key, 0), value) if key in ("train_sessions", "teacher_sessions")
                          else total.get(key, 0) + value)
    return total


def conversation_request_keys(frame: pl.DataFrame, teacher: TeacherConfig) -> list[str]:
    """The request key of every teacher answer in a rules or thoughts frame's `conversation` column."""
    if "conversation" not in frame.columns:
        raise ValueError(f"conversation_request_keys: no 'conversation' column (columns: {frame.columns})")
    if "request_keys" in frame.columns:  # recorded as the answers came (structured turns change the key)
        return [k for keys in frame["request_keys"].to_list() for k in keys or []]
    generation = teacher.generation()
    keys = []
    for conversation in frame["conversation"].to_list():
        turns = [{"role": t["role"], "content": t["content"]} for t in conversation or []]
        keys += [request_key(teacher.model, turns[:i], generation)
                 for i, t in enumerate(turns) if t["role"] == "assistant"]
    return keys


def usage_totals(usage: pl.DataFrame, keys: list[str] | None = None) -> dict[str, Any]:
    """Tokens, money (null when no request has a price), latency, truncated answers of teacher usage rows
    (kd_bundle.teacher.USAGE_COLUMNS); with `keys`, of those requests only (each counted once)."""
    if keys is not None:
        wanted = pl.DataFrame({"request_key": list(dict.fromkeys(keys))}, schema={"request_key": pl.String})
        found = usage.join(wanted, on="request_key", how="semi")
        missing = wanted.height - found.height
        usage = found
    else:
        missing = 0
    priced = usage["cost"].drop_nulls()
    return {
        "tokens": int(usage["prompt_tokens"].fill_null(0).sum() + usage["completion_tokens"].fill_null(0).sum()),
        "cost": float(priced.sum()) if priced.len() else None,
        "seconds": float(usage["latency_s"].fill_null(0.0).sum()),
        "truncated": int((usage["finish_reason"] == "length").sum()),
        "requests": usage.height,
        "missing_requests": missing,
    }


def inference_usage(predictions: pl.DataFrame) -> dict[str, Any]:
    """Summed `prompt_tokens`, `new_tokens`, `seconds` of a predictions frame; null where the optional column is
    absent or entirely null (baselines, predictions written before these columns existed)."""
    def total(column: str) -> Any:
        if column not in predictions.columns or predictions[column].null_count() == predictions.height:
            return None
        return predictions[column].sum()
    prompt, new, seconds = total("prompt_tokens"), total("new_tokens"), total("seconds")
    return {"inference_prompt_tokens": None if prompt is None else int(prompt),
            "inference_new_tokens": None if new is None else int(new),
            "wall_seconds": None if seconds is None else float(seconds)}


def train_stats_path(adapter_dir: Path) -> Path:
    """Where an adapter's training stats live: beside its folder, not in it, because the folder's name is the hash
    of its files and the stats hold a clock reading (two equal trainings must give one adapter)."""
    return Path(adapter_dir).with_name(Path(adapter_dir).name + TRAIN_STATS_SUFFIX)


def read_train_stats(adapter_dir: Path | None) -> dict[str, Any]:
    """Training seconds, tokens, examples, steps and the validation choice of an adapter (TRAIN_COLUMNS); 0 seconds
    and tokens without an adapter (ICL); null for what an adapter trained before it was recorded does not say."""
    unknown = dict.fromkeys(TRAIN_COLUMNS)
    if adapter_dir is None:
        return {**unknown, "train_seconds": 0.0, "train_tokens": 0}
    path = train_stats_path(adapter_dir)
    if not path.is_file():
        return unknown
    try:
        stats = json.loads(path.read_text())
        row = {**unknown, "train_seconds": float(stats["seconds"]), "train_tokens": int(stats["train_tokens"]),
               "train_examples": stats.get("examples"), "train_steps": stats.get("steps"),
               "best_step": stats.get("best_step"), "train_losses": stats.get("train_losses"),
               "valid_steps": stats.get("valid_steps"), "valid_losses": stats.get("valid_losses"),
               "valid_precisions": stats.get("valid_precisions")}
        if stats.get("best_step") is not None:
            kept = stats["valid_steps"].index(stats["best_step"])
            if stats.get("valid_losses"):
                row["valid_loss"] = float(stats["valid_losses"][kept])
            if stats.get("valid_precisions"):
                row["valid_strict_precision"] = float(stats["valid_precisions"][kept])
        return row
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable training stats ({exc})") from None
