"""AICL and strict metrics on hand-computed cases, and the `score` CLI end to end on the real Electronic test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from kd_bundle.config import DataConfig, settings
from kd_bundle.data.sessions import load_sessions, split_of
from kd_bundle.evaluation.metrics import SCORE_KEYS, cli, score_predictions, session_scores
from kd_bundle.evaluation.predictions import predictions_frame, write_predictions_jsonl
from kd_bundle.evaluation.results import result_row

REPO = Path(__file__).resolve().parents[3]
ITEMS = list("abcdefgh")


def _sessions(truth: dict[int, list[list[str]]]) -> pl.DataFrame:
    """Sessions over items a..h with the given ground truth (only the columns scoring reads)."""
    return pl.DataFrame(
        {"session_id": list(truth), "item_ids": [ITEMS] * len(truth), "bundles": list(truth.values())},
        schema={"session_id": pl.Int64, "item_ids": pl.List(pl.String), "bundles": pl.List(pl.List(pl.String))},
    )


def _score(truth: dict[int, list[list[str]]], generated: dict[int, list[list[str]] | None]) -> dict[str, float | int]:
    rows = [{"session_id": sid, "bundles": bundles} for sid, bundles in generated.items()]
    return score_predictions(predictions_frame(rows), _sessions(truth))


def _assert_scores(scores: dict[str, float | int], **expected: float) -> None:
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value), key


def test_perfect_prediction_scores_one() -> None:
    truth = {1: [["a", "b", "c"], ["d", "e"]], 2: [["f", "g"]]}
    scores = _score(truth, truth)
    assert list(scores) == SCORE_KEYS
    _assert_scores(scores, precision=1, recall=1, coverage=1, strict_precision=1, strict_recall=1, strict_coverage=1)
    assert (scores["n_sessions"], scores["n_scored"], scores["n_failed"]) == (2, 2, 0)


def test_nested_truth_first_match_decides_coverage() -> None:
    # g={a,b} is inside both t1={a,b,c,d} and t2={a,b}. AICL takes the first: coverage 2/4, recall 1/2.
    # Strict: both t contain g -> strict_recall 2/2; strict_coverage = mean(2/4, 2/2) = 0.75.
    scores = _score({1: [["a", "b", "c", "d"], ["a", "b"]]}, {1: [["a", "b"]]})
    _assert_scores(scores, precision=1, recall=0.5, coverage=0.5, strict_recall=1, strict_coverage=0.75)
    # Same bundles, truth reversed: the first match is now {a,b} itself, coverage 2/2.
    scores = _score({1: [["a", "b"], ["a", "b", "c", "d"]]}, {1: [["a", "b"]]})
    _assert_scores(scores, precision=1, recall=0.5, coverage=1, strict_recall=1, strict_coverage=0.75)


def test_overlapping_truth_and_a_bundle_inside_two_truths() -> None:
    # T = [{a,b,c}, {b,c,d}]; G = [{b,c}, {a,b,c}, {d,e}].
    # {b,c} is in both t1 and t2 -> first match t1, 2/3. {a,b,c} -> t1, 3/3. {d,e} -> no hit.
    # precision 2/3, recall 2/2, coverage (2/3 + 1) / 2 = 5/6.
    # Strict: t1 and t2 each contain some g -> 2/2; best per t: t1 3/3, t2 2/3 -> strict_coverage 5/6.
    truth = {1: [["a", "b", "c"], ["b", "c", "d"]]}
    scores = _score(truth, {1: [["b", "c"], ["a", "b", "c"], ["d", "e"]]})
    _assert_scores(scores, precision=2 / 3, recall=1, coverage=5 / 6)
    _assert_scores(scores, strict_precision=2 / 3, strict_recall=1, strict_coverage=5 / 6)


def test_one_item_bundles_are_dropped_after_dedup() -> None:
    # [c, c] is the set {c}: dropped like [a]. Left: {a,b} -> P = R = C = 1 (not P = 1/3).
    scores = _score({1: [["a", "b"]]}, {1: [["a"], ["a", "b"], ["c", "c"]]})
    _assert_scores(scores, precision=1, recall=1, coverage=1, strict_precision=1)
    # Only 1-item bundles: nothing left, so the session leaves S.
    scores = _score({1: [["a", "b"]], 2: [["c", "d"]]}, {1: [["a", "b"]], 2: [["c"], ["d"]]})
    assert (scores["n_scored"], scores["n_failed"]) == (1, 1)


def test_failed_and_missing_sessions_excluded_in_aicl_zero_in_strict() -> None:
    # s1 perfect; s2 output failed (null); s3 has no prediction row at all.
    # AICL averages over S = {s1}: all 1. Strict averages over 3 sessions: 1/3 each.
    truth = {1: [["a", "b"]], 2: [["c", "d"]], 3: [["e", "f"]]}
    scores = _score(truth, {1: [["a", "b"]], 2: None})
    _assert_scores(scores, precision=1, recall=1, coverage=1)
    _assert_scores(scores, strict_precision=1 / 3, strict_recall=1 / 3, strict_coverage=1 / 3)
    assert (scores["n_sessions"], scores["n_scored"], scores["n_failed"]) == (3, 1, 2)
    statuses = session_scores(predictions_frame([{"session_id": 2}]), _sessions(truth))["status"].to_list()
    assert statuses == ["missing", "unparsed", "missing"]


def test_recall_above_one_in_aicl_but_not_strict() -> None:
    # T = [{a,b,c}]; G = [{a,b}, {b,c}, {a,c}]: three hits on one truth bundle.
    # recall 3/1 = 3, coverage (2/3 * 3) / 3 = 2/3; strict_recall 1/1, strict_coverage 2/3.
    scores = _score({1: [["a", "b", "c"]]}, {1: [["a", "b"], ["b", "c"], ["a", "c"]]})
    _assert_scores(scores, precision=1, recall=3, coverage=2 / 3, strict_recall=1, strict_coverage=2 / 3)


def test_coverage_is_pooled_over_hit_bundles_not_sessions() -> None:
    # s1: {a,b} in {a,b,c,d} -> 1 hit, 0.5. s2: two exact hits -> 2 hits, 1 + 1.
    # coverage = (0.5 + 2) / 3 = 5/6 (a per-session mean would give 0.75); strict_coverage = (0.5 + 1) / 2.
    truth = {1: [["a", "b", "c", "d"]], 2: [["e", "f"], ["g", "h"]]}
    scores = _score(truth, {1: [["a", "b"]], 2: [["e", "f"], ["g", "h"]]})
    _assert_scores(scores, coverage=5 / 6, strict_coverage=0.75, precision=1, recall=1)


def test_empty_prediction_and_no_predictions_score_zero() -> None:
    # An empty list parsed fine but holds no bundle: out of S, like a failure.
    per_session = session_scores(predictions_frame([{"session_id": 1, "bundles": []}]), _sessions({1: [["a", "b"]]}))
    assert per_session["status"].to_list() == ["empty"]
    for scores in (_score({1: [["a", "b"]]}, {1: []}), _score({1: [["a", "b"]]}, {})):
        assert all(scores[key] == 0 for key in ["precision", "recall", "coverage", "strict_precision", "n_scored"])
        assert scores["n_failed"] == 1


def test_session_without_truth_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"session\(s\) \[2\] have no ground-truth bundle"):
        _score({1: [["a", "b"]], 2: []}, {1: [["a", "b"]]})


def test_scoring_checks_predictions_first() -> None:
    with pytest.raises(ValueError, match=r"session 1: 'zz'"):
        _score({1: [["a", "b"]]}, {1: [["a", "zz"]]})
    with pytest.raises(ValueError, match=r"unknown session id\(s\) 5"):
        _score({1: [["a", "b"]]}, {5: [["a", "b"]]})


def test_scores_fit_a_results_row() -> None:
    row = result_row(domain="electronic", rq="baseline", method="x", **_score({1: [["a", "b"]]}, {1: [["a", "b"]]}))
    assert row["precision"].to_list() == [1.0]


# --- CLI, end to end on the real Electronic test split ------------------------------------------------------------


@pytest.fixture(scope="module")
def electronic_test() -> pl.DataFrame:
    root = settings().data_root
    if not (root / "electronic" / "aicl").exists():
        pytest.skip(f"real data not found under {root}")
    return split_of(load_sessions(DataConfig(domain="electronic"), root), "test")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kd_bundle", "score", "--domain", "electronic", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_ground_truth_as_prediction_scores_one(tmp_path: Path, electronic_test: pl.DataFrame) -> None:
    # Electronic test has no nested or duplicate truth bundles, so each truth bundle's first match is itself.
    path = tmp_path / "truth.jsonl"
    write_predictions_jsonl(electronic_test.select("session_id", "bundles"), path)
    done = _run_cli("--predictions", str(path), "--split", "test", "--data-root", str(settings().data_root))
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)  # the whole of stdout is one JSON object
    for key in ["precision", "recall", "coverage", "strict_precision", "strict_recall", "strict_coverage"]:
        assert scores[key] == pytest.approx(1.0), key
    assert (scores["n_sessions"], scores["n_scored"], scores["n_failed"]) == (180, 180, 0)


def test_cli_first_truth_bundle_with_null_and_missing_lines(tmp_path: Path, electronic_test: pl.DataFrame) -> None:
    # Each session predicts only its first truth bundle: every bundle hits fully (P = C = 1) and
    # recall = 1/|T_s| per session. The first 20 sessions are null, the next 10 have no line:
    # S = the other 150; AICL recall = mean over S of 1/|T_s|; strict = sum over S of 1/|T_s|, / 180.
    rows = electronic_test.select("session_id", bundles=pl.col("bundles").list.head(1), n=pl.col("bundles").list.len())
    kept = rows.slice(30)
    failed = rows.head(20).with_columns(bundles=pl.lit(None, dtype=pl.List(pl.List(pl.String))))
    frame = pl.concat([failed, kept]).drop("n")
    path = tmp_path / "first.jsonl"
    write_predictions_jsonl(frame, path)
    done = _run_cli("--predictions", str(path))
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    inverse = (1 / kept["n"]).to_list()
    _assert_scores(scores, precision=1, coverage=1, recall=sum(inverse) / 150)
    _assert_scores(scores, strict_precision=150 / 180, strict_recall=sum(inverse) / 180)
    assert (scores["n_sessions"], scores["n_scored"], scores["n_failed"], scores["n_missing"]) == (180, 150, 30, 10)


def test_doubled_truth_gives_recall_two_strict_one(electronic_test: pl.DataFrame) -> None:
    doubled = electronic_test.select("session_id", bundles=pl.concat_list("bundles", "bundles"))
    scores = score_predictions(doubled, electronic_test)
    _assert_scores(scores, precision=1, recall=2, coverage=1, strict_recall=1, strict_coverage=1)


def test_cli_foreign_ids_and_bad_lines_exit_2(
    tmp_path: Path, electronic_test: pl.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    first = electronic_test.row(0, named=True)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(
        json.dumps({"session_id": 1, "bundles": None})  # session 1 is a training session
        + "\n"
        + json.dumps({"session_id": first["session_id"], "bundles": [[first["item_ids"][0], "B000NOTHERE"]]})
    )
    assert cli(["--domain", "electronic", "--predictions", str(foreign)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "unknown session id(s) 1," in captured.err
    foreign.write_text(json.dumps({"session_id": first["session_id"], "bundles": [["B000NOTHERE", "x"]]}))
    assert cli(["--domain", "electronic", "--predictions", str(foreign)]) == 2
    assert f"session {first['session_id']}: 'B000NOTHERE'" in capsys.readouterr().err
    foreign.write_text('{"session_id": 1, "bundles": null}\n{"session_id": 2, "bundles": [[}\n')
    assert cli(["--domain", "electronic", "--predictions", str(foreign)]) == 2
    assert f"{foreign}:2: not valid JSON" in capsys.readouterr().err
