"""Calibration and classification metrics: ACE, ECE, Brier score, NLL, ROC AUC, reliability curves, summaries.

``scores`` are confidence scores in [0, 1] (the probability of the answered class) and ``hits`` say whether that
answer was right (bool or 0/1). Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata


def _check_scores_hits(scores: Any, hits: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    h = np.asarray(hits)
    if s.dtype == np.bool_ or not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise TypeError(f"scores must be real numbers, got dtype {s.dtype}")
    if s.ndim != 1 or h.ndim != 1 or s.shape != h.shape:
        raise ValueError(
            f"scores and hits must be 1-D of the same length, got shapes {s.shape} and {h.shape}"
        )
    if s.size == 0:
        raise ValueError("scores and hits are empty")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(f"scores must lie in [0, 1], got values in [{s.min()}, {s.max()}]")
    numeric = np.issubdtype(h.dtype, np.integer) or np.issubdtype(h.dtype, np.floating)
    if h.dtype != np.bool_ and not (numeric and np.isin(h, (0, 1)).all()):
        raise ValueError("hits must be booleans or 0/1")
    return s, h.astype(np.float64)


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _equal_mass_bins(
    s: np.ndarray, h: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin score sums, hit sums, counts and the n_bins + 1 edges of the equal-mass bins.

    The bins are ``np.array_split`` of the items sorted by score: the first ``n % n_bins`` bins hold one item
    more (bins are empty only when n < n_bins, at the end). Items with tied scores are ordered by hit, misses
    first, so the result depends only on the (score, hit) pairs, never on the order of the items.

    Rather than argsorting by (score, hit), the hits before each bin start are counted from two plain sorts,
    of all scores and of the misses' scores (within the tie group at a bin start, misses come first).
    """
    n = s.size
    sizes = np.full(n_bins, n // n_bins)
    sizes[: n % n_bins] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])  # n_bins + 1 positions in the sorted order
    s_sorted = np.sort(s)
    miss_sorted = np.sort(s[h == 0])
    inside = (bounds > 0) & (bounds < n)
    inner = bounds[inside]
    tie_score = s_sorted[inner]
    ties_start = np.searchsorted(s_sorted, tie_score, side="left")
    misses_below = np.searchsorted(miss_sorted, tie_score, side="left")
    misses_tied = np.searchsorted(miss_sorted, tie_score, side="right") - misses_below
    misses_before = misses_below + np.minimum(inner - ties_start, misses_tied)
    hits_before = np.zeros(n_bins + 1)
    hits_before[inside] = inner - misses_before
    hits_before[bounds >= n] = n - miss_sorted.size
    cumulative_scores = np.concatenate([[0.0], np.cumsum(s_sorted)])
    score_sums = np.diff(cumulative_scores[bounds])
    edges = np.append(s_sorted[np.minimum(bounds[:-1], n - 1)], s_sorted[-1])
    return score_sums, np.diff(hits_before), sizes, edges


def ace(scores: Any, hits: Any, n_bins: int = 10) -> float:
    """The paper's equation 2, adaptive calibration error: mean over equal-mass bins of |mean score - hit rate|.

    Items are sorted by score and split into ``n_bins`` bins of (nearly) equal size as ``np.array_split`` does;
    ties in score are broken by hit (misses first) so the value does not depend on item order. Bins left empty
    (fewer items than bins) are skipped; the mean over bins is unweighted.
    """
    s, h = _check_scores_hits(scores, hits)
    n_bins = _check_n_bins(n_bins)
    score_sums, hit_sums, counts, _ = _equal_mass_bins(s, h, n_bins)
    filled = counts > 0
    gaps = np.abs(score_sums[filled] - hit_sums[filled]) / counts[filled]
    return float(gaps.mean())


def _weighted_bins(
    s: np.ndarray, h: np.ndarray, weights: Any, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin weighted score sums, weighted hit sums, weights and item counts of the equal-weight bins.

    One rule with :func:`ace`: equal weights (or none) give exactly its bins (:func:`_equal_mass_bins`). Unequal
    weights cut the items, sorted by score (misses first among ties), into bins of equal total weight: an item goes
    to the bin that holds the middle of its weight."""
    if weights is None:
        w = np.ones_like(s)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != s.shape:
            raise ValueError(f"weights must have the scores' shape {s.shape}, got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, >= 0, with a positive sum")
    if (w == w[0]).all():
        score_sums, hit_sums, counts, _ = _equal_mass_bins(s, h, n_bins)
        return score_sums * w[0], hit_sums * w[0], counts * w[0], counts
    order = np.lexsort((h, s))
    s, h, w = s[order], h[order], w[order]
    middle = (np.cumsum(w) - 0.5 * w) / w.sum()
    index = np.minimum((middle * n_bins).astype(np.int64), n_bins - 1)
    return (
        np.bincount(index, weights=w * s, minlength=n_bins),
        np.bincount(index, weights=w * h, minlength=n_bins),
        np.bincount(index, weights=w, minlength=n_bins),
        np.bincount(index, minlength=n_bins),
    )


def weighted_ace(scores: Any, hits: Any, weights: Any = None, n_bins: int = 10) -> float:
    """The paper's equation 2 (ACE) with item weights: mean over non-empty equal-weight bins of |weighted mean
    score - weighted hit rate|; equal weights give :func:`ace` exactly (the bins of :func:`_weighted_bins`)."""
    s, h = _check_scores_hits(scores, hits)
    score_sums, hit_sums, totals, _ = _weighted_bins(s, h, weights, _check_n_bins(n_bins))
    filled = totals > 0
    return float((np.abs(score_sums[filled] - hit_sums[filled]) / totals[filled]).mean())


def reliability_bins(scores: Any, hits: Any, weights: Any = None, n_bins: int = 10) -> dict[str, list[float]]:
    """Weighted mean score, hit rate, weight and item count of the non-empty bins of :func:`weighted_ace` (the
    points of a reliability diagram)."""
    s, h = _check_scores_hits(scores, hits)
    score_sums, hit_sums, totals, counts = _weighted_bins(s, h, weights, _check_n_bins(n_bins))
    filled = totals > 0
    return {
        "mean_score": (score_sums[filled] / totals[filled]).tolist(),
        "hit_rate": (hit_sums[filled] / totals[filled]).tolist(),
        "weight": totals[filled].tolist(),
        "count": counts[filled].astype(np.int64).tolist(),
    }


def _uniform_bin_index(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b covers [b/n_bins, (b+1)/n_bins); the last bin also holds 1.0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.minimum(np.searchsorted(edges, s, side="right") - 1, n_bins - 1)


def ece(scores: Any, hits: Any, n_bins: int = 10) -> float:
    """Expected calibration error: |mean score - hit rate| over equal-width bins of [0, 1], weighted by bin mass.

    Bin b is [b/n_bins, (b+1)/n_bins), the last one closed at 1. Equals torchmetrics'
    ``binary_calibration_error(scores, hits, n_bins, norm="l1")`` (the top-label ECE when ``scores`` are the
    answers' scores), except that torchmetrics gives scores exactly 1.0 a bin of their own.
    """
    s, h = _check_scores_hits(scores, hits)
    n_bins = _check_n_bins(n_bins)
    index = _uniform_bin_index(s, n_bins)
    score_sums = np.bincount(index, weights=s, minlength=n_bins)
    hit_sums = np.bincount(index, weights=h, minlength=n_bins)
    # sum_b (count_b / n) * |score_sum_b / count_b - hit_sum_b / count_b| = sum_b |score_sum_b - hit_sum_b| / n
    return float(np.abs(score_sums - hit_sums).sum() / s.size)


def _check_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs)
    if p.dtype == np.bool_ or not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise TypeError(f"probs must be real numbers, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must have shape (n, C), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs is empty: no items")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1] (no NaN)")
    off = np.flatnonzero(np.abs(p.sum(axis=1) - 1.0) > 1e-6)
    if off.size:
        raise ValueError(f"probs rows must sum to 1; item(s) {off[:10].tolist()} do not")
    y = np.asarray(labels)
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape {(p.shape[0],)} to match probs, got {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    bad = y[(y < 0) | (y >= p.shape[1])]
    if bad.size:
        raise ValueError(f"label(s) {bad[:10].tolist()} outside the classes [0, {p.shape[1]})")
    return p, y.astype(np.intp)


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over items of sum over classes of (p_ic - [y_i = c])^2, in [0, 2]."""
    p, y = _check_probs_labels(probs, labels)
    squared = (p**2).sum(axis=1) - 2 * p[np.arange(p.shape[0]), y] + 1.0
    return float(squared.mean())


def nll(probs: Any, labels: Any, eps: float = 1e-15) -> float:
    """Mean negative log likelihood of the true labels; probabilities are clipped to at least ``eps``
    (so a confidently wrong item costs -log(eps) ~ 34.5 instead of infinity)."""
    p, y = _check_probs_labels(probs, labels)
    return float(-np.log(np.maximum(p[np.arange(p.shape[0]), y], eps)).mean())


def roc_auc(margins: Any, positives: Any) -> float:
    """Area under the ROC curve of ``margins`` (higher = more likely positive) for the 0/1 ``positives``: the
    probability that a random positive outranks a random negative, ties counting one half (Mann-Whitney U).

    How well a score ranks items regardless of where the answer threshold sits: an LLM that answers "no" to every
    item has accuracy 0.5 on a balanced task yet may rank them well. NaN if either class is absent.
    """
    m = np.asarray(margins, dtype=np.float64)
    y = np.asarray(positives)
    if m.ndim != 1 or y.shape != m.shape:
        raise ValueError(f"roc_auc: margins {m.shape} and positives {y.shape} must be 1-d of the same length")
    if not np.isfinite(m).all():
        raise ValueError("roc_auc: margins must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("roc_auc: positives must be 0/1 or bool")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(m)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin mean score, hit rate and count (NaN means for empty bins), and the n_bins + 1 bin edges."""

    mean_score: np.ndarray
    hit_rate: np.ndarray
    count: np.ndarray
    edges: np.ndarray
    strategy: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "mean_score": [None if np.isnan(v) else float(v) for v in self.mean_score],
            "hit_rate": [None if np.isnan(v) else float(v) for v in self.hit_rate],
            "count": [int(c) for c in self.count],
            "edges": [float(e) for e in self.edges],
        }


def reliability_curve(
    scores: Any, hits: Any, n_bins: int = 10, strategy: Literal["quantile", "uniform"] = "quantile"
) -> ReliabilityCurve:
    """Mean score vs hit rate per bin: "quantile" uses the equal-mass bins of :func:`ace` (edges are the
    smallest score of each bin, then the largest score), "uniform" the equal-width bins of :func:`ece`."""
    s, h = _check_scores_hits(scores, hits)
    n_bins = _check_n_bins(n_bins)
    if strategy == "quantile":
        score_sums, hit_sums, count, edges = _equal_mass_bins(s, h, n_bins)
    elif strategy == "uniform":
        index = _uniform_bin_index(s, n_bins)
        score_sums = np.bincount(index, weights=s, minlength=n_bins)
        hit_sums = np.bincount(index, weights=h, minlength=n_bins)
        count = np.bincount(index, minlength=n_bins)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = score_sums / count
        hit_rate = hit_sums / count
    return ReliabilityCurve(mean_score, hit_rate, count, edges, strategy)


def summarize(values: Any) -> dict[str, float]:
    """Across-task summary ignoring NaN: n (values used), n_nan (ignored), mean, std (sample, ddof=1; NaN for
    n < 2), median, q25, q75 (the upper quartile) and iqr = q75 - q25. All statistics are NaN when n = 0."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("summarize needs at least one value")
    finite = v[~np.isnan(v)]
    n = finite.size
    nan = float("nan")
    if n == 0:
        stats = dict.fromkeys(("mean", "std", "median", "q25", "q75", "iqr"), nan)
    else:
        q25, median, q75 = np.percentile(finite, [25, 50, 75])
        stats = {
            "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if n > 1 else nan,
            "median": float(median),
            "q25": float(q25),
            "q75": float(q75),
            "iqr": float(q75 - q25),
        }
    return {"n": n, "n_nan": int(v.size - n), **stats}
