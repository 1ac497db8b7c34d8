"""Paired comparisons of two methods measured on the same units (tasks, or task x repeat cells).

A claim such as "SE beats U" is backed here by the pairs themselves, not by two means: the Wilcoxon signed-rank
test of the differences (scipy), the median and mean difference, the share of pairs where the first method is
lower, and a seeded bootstrap confidence interval of the mean difference. Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np

Alternative = Literal["two-sided", "less", "greater"]


class PairedComparison(NamedTuple):
    """Result of :func:`wilcoxon_paired` for pairs ``(a_i, b_i)``; differences are ``a - b``.

    Attributes:
        statistic: the signed-rank statistic scipy reports (the smaller rank sum for two-sided tests, else the
            rank sum of the positive differences).
        p_value: its p-value (1.0 when every difference is zero: no evidence either way).
        n_pairs: pairs compared.
        median_difference: median of ``a - b``.
        fraction_a_lower: share of pairs with ``a < b``.
        mean_difference: mean of ``a - b``.
        n_zero: pairs with ``a == b`` (the signed-rank test leaves them out).
    """

    statistic: float
    p_value: float
    n_pairs: int
    median_difference: float
    fraction_a_lower: float
    mean_difference: float
    n_zero: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self._asdict())


def _paired_arrays(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"paired values must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"paired values must have the same length, got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("a paired comparison needs at least one pair")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired values must be finite (drop NaN/inf pairs explicitly before comparing)")
    return x, y


MAX_SIGN_FLIP_PAIRS = 13
"""Up to this many pairs, with a tie or a zero among the differences, scipy's Wilcoxon test is the exact sign-flip
permutation test (its 2**n sign patterns fit in its 9999 resamples)."""


def wilcoxon_paired(a: Any, b: Any, *, alternative: Alternative = "two-sided") -> PairedComparison:
    """Wilcoxon signed-rank test of the paired differences ``a - b`` (scipy.stats.wilcoxon, zero differences
    dropped as in Wilcoxon's original test); ``alternative="less"`` tests whether ``a`` tends to be lower."""
    from scipy import stats

    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be 'two-sided', 'less' or 'greater', got {alternative!r}")
    x, y = _paired_arrays(a, b)
    difference = x - y
    n_zero = int(np.count_nonzero(difference == 0))
    nonzero = np.abs(difference[difference != 0])
    if n_zero == difference.size:
        statistic, p_value = 0.0, 1.0
    elif difference.size <= MAX_SIGN_FLIP_PAIRS and (n_zero or np.unique(nonzero).size < nonzero.size):
        statistic, p_value = _sign_flip_test(difference, alternative)
    else:
        test = stats.wilcoxon(x, y, zero_method="wilcox", alternative=alternative)
        statistic, p_value = float(test.statistic), float(test.pvalue)
    return PairedComparison(
        statistic=statistic,
        p_value=p_value,
        n_pairs=int(difference.size),
        median_difference=float(np.median(difference)),
        fraction_a_lower=float(np.mean(difference < 0)),
        mean_difference=float(difference.mean()),
        n_zero=n_zero,
    )


def _sign_flip_test(difference: np.ndarray, alternative: Alternative) -> tuple[float, float]:
    """What ``scipy.stats.wilcoxon`` answers for these differences when they have a tie or a zero and at most
    :data:`MAX_SIGN_FLIP_PAIRS` of them: the signed-rank statistic and the p-value of its exact permutation test
    over every sign flip, with scipy's arithmetic (the same floats), in one vectorized pass where scipy evaluates
    the statistic once per flip (seconds per test)."""
    from scipy.stats import rankdata

    n = difference.size
    nonzero = difference != 0
    ranks = np.zeros(n)
    ranks[nonzero] = rankdata(
        np.abs(difference[nonzero])
    )  # average ranks; a zero difference counts in no sum
    r_plus, r_minus = float(ranks[difference > 0].sum()), float(ranks[difference < 0].sum())
    # every sign pattern makes some differences positive: the null statistics are the rank sums of all subsets
    # (half-integers, so exact whatever the summation order)
    positive = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    null = positive.astype(np.float64) @ ranks
    gamma = abs(np.finfo(np.float64).eps * 100 * r_plus)
    less = np.count_nonzero(null <= r_plus + gamma) / 2**n
    greater = np.count_nonzero(null >= r_plus - gamma) / 2**n
    if alternative == "less":
        return r_plus, float(np.clip(less, 0.0, 1.0))
    if alternative == "greater":
        return r_plus, float(np.clip(greater, 0.0, 1.0))
    return min(r_plus, r_minus), float(np.clip(min(less, greater) * 2, 0.0, 1.0))


def relative_change(new: float, baseline: float) -> float:
    """``(new - baseline) / baseline``: -0.46 means 46% lower than the baseline."""
    new, baseline = float(new), float(baseline)
    if not (math.isfinite(new) and math.isfinite(baseline)):
        raise ValueError(f"relative_change needs finite values, got {new} and {baseline}")
    if baseline == 0:
        raise ValueError("relative_change: the baseline is 0, so a relative change is undefined")
    return (new - baseline) / abs(baseline)


def bootstrap_mean_difference_ci(
    a: Any, b: Any, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``a - b``, resampling pairs (seeded)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x, y = _paired_arrays(a, b)
    difference = x - y
    rng = np.random.default_rng(seed)
    # Resampled in blocks so memory stays bounded for many pairs.
    means = np.empty(n_resamples)
    block = max(1, 2_000_000 // difference.size)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        index = rng.integers(0, difference.size, size=(stop - start, difference.size))
        means[start:stop] = difference[index].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
