"""Confidence from the results table alone: percentile-bootstrap intervals over sessions, and paired differences.

Every results row keeps its per-session values (kd_bundle.evaluation.results SESSION_COLUMNS), from which each metric is
recomputed on a resample of sessions: the strict metrics are means over sessions, the AICL ones ratios over the
scored sessions of the resample (precision and recall: sum over scored / number scored; coverage: coverage sum /
hits). A paired comparison draws ONE resample of the sessions both rows were scored on and takes the difference
of the two metrics on it, so the session-to-session variation both rows share cancels out.

Seeds: rows that differ only in `sampling_seed` / `training_seed` are one configuration. They are pooled per
session: each session's values are averaged over the seeds, then sessions are resampled. The point estimate of a
strict metric is then the mean of the seeds' values; an AICL ratio is the ratio of the seed-averaged sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from kd_bundle.evaluation.results import METRIC_COLUMNS

METRIC_NAMES = METRIC_COLUMNS
# per-session arrays the metrics are built from; AICL sums are taken over scored sessions only
_PARTS = ["scored", "precision_scored", "recall_scored", "hits", "coverage_sum", "precision", "strict_recall",
          "strict_coverage"]


def session_arrays(rows: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(session ids, per-session parts averaged over the given rows: seeds of one configuration) over the sessions
    every row has; None when a row carries no per-session values (a table written before they existed)."""
    if not rows or any(r.get("session_ids") is None for r in rows):
        return None
    common = sorted(set.intersection(*(set(r["session_ids"]) for r in rows)))
    if not common:
        return None
    total = {p: np.zeros(len(common)) for p in _PARTS}
    for row in rows:
        where = {sid: i for i, sid in enumerate(row["session_ids"])}
        take = np.array([where[sid] for sid in common])
        column = {name: np.asarray(row[f"session_{name}"], dtype=float)[take]
                  for name in ("scored", "precision", "recall", "hits", "coverage_sum", "strict_recall",
                               "strict_coverage")}
        parts = {**column, "precision_scored": column["precision"] * column["scored"],
                 "recall_scored": column["recall"] * column["scored"]}
        for p in _PARTS:
            total[p] += parts[p]
    return np.asarray(common), {p: v / len(rows) for p, v in total.items()}


def weighted_metrics(weights: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every metric under session weights (B x n resample counts, or one row of ones for the point estimate);
    an AICL metric with nothing scored in a resample is NaN, never 0."""
    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    sums = {p: weights @ v for p, v in parts.items()}
    n = weights.sum(axis=1)
    return {
        "precision": ratio(sums["precision_scored"], sums["scored"]),
        "recall": ratio(sums["recall_scored"], sums["scored"]),
        "coverage": ratio(sums["coverage_sum"], sums["hits"]),
        "strict_precision": sums["precision"] / n,
        "strict_recall": sums["strict_recall"] / n,
        "strict_coverage": sums["strict_coverage"] / n,
    }


def resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """B x n counts: how often each session is drawn in each of `n_boot` resamples of size n."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def interval(parts: dict[str, np.ndarray], n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """{metric: value, metric_lo, metric_hi} for every metric: percentile interval of the bootstrap replicates."""
    n = len(parts["scored"])
    point = weighted_metrics(np.ones((1, n)), parts)
    replicates = weighted_metrics(resample_weights(n, n_boot, seed), parts)
    out: dict[str, Any] = {}
    for m in METRIC_NAMES:
        out[m] = _finite(point[m][0])
        out[f"{m}_lo"], out[f"{m}_hi"] = _percentiles(replicates[m], level)
    return out


def paired_difference(a: tuple[np.ndarray, dict], b: tuple[np.ndarray, dict], n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """{metric: a - b, metric_lo, metric_hi} on the sessions both were scored on, one resample for both."""
    ids = np.intersect1d(a[0], b[0])
    if ids.size == 0:
        return {}
    pa, pb = (_subset(x, ids) for x in (a, b))
    weights = np.vstack([np.ones((1, ids.size)), resample_weights(ids.size, n_boot, seed)])
    ma, mb = weighted_metrics(weights, pa), weighted_metrics(weights, pb)
    out: dict[str, Any] = {"n_paired": int(ids.size)}
    for m in METRIC_NAMES:
        diff = ma[m] - mb[m]
        out[m] = _finite(diff[0])
        out[f"{m}_lo"], out[f"{m}_hi"] = _percentiles(diff[1:], level)
    return out


def verdict(diff: dict[str, Any], metric: str) -> str:
    """'+' / '-' when the paired interval lies above / below 0, '=' when it contains 0, '' when not computable."""
    lo, hi = diff.get(f"{metric}_lo"), diff.get(f"{metric}_hi")
    if lo is None or hi is None:
        return ""
    return "+" if lo > 0 else "-" if hi < 0 else "="


def _subset(arrays: tuple[np.ndarray, dict[str, np.ndarray]], ids: np.ndarray) -> dict[str, np.ndarray]:
    take = np.searchsorted(arrays[0], ids)  # session ids are sorted by session_arrays
    return {p: v[take] for p, v in arrays[1].items()}


def _percentiles(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def pooled_groups(results: pl.DataFrame, keys: list[str]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(labels, rows) per configuration: rows equal on `keys`, i.e. seeds of one configuration, in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in results.iter_rows(named=True):
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [(dict(zip(keys, k)), rows) for k, rows in groups.items()]
