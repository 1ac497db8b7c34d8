from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.stats import (
    PairedComparison,
    bootstrap_mean_difference_ci,
    relative_change,
    wilcoxon_paired,
)


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_tied_or_zero_differences_give_scipys_numbers_exactly(alternative: str) -> None:
    """Up to 13 pairs with a tie or a zero, the vectorized sign-flip test answers what scipy.stats.wilcoxon does
    (its permutation test, seconds each) to the bit: accuracies of tasks often tie."""
    from scipy import stats

    rng = np.random.default_rng(7)
    checked = 0
    for n in (*range(2, 11), 13):  # scipy's side takes seconds at 13 pairs
        for _ in range(6 if n <= 10 else 1):
            a = np.round(rng.uniform(0.5, 0.9, n), 2)  # two decimals: ties and zeros are frequent
            b = np.round(a + rng.choice([-0.02, -0.01, 0.0, 0.01, 0.03], n), 2)
            if np.all(a == b):
                continue
            ours = wilcoxon_paired(a, b, alternative=alternative)  # type: ignore[arg-type]
            theirs = stats.wilcoxon(a, b, zero_method="wilcox", alternative=alternative)
            assert ours.statistic == float(theirs.statistic) and ours.p_value == float(theirs.pvalue), (a, b)
            checked += 1
    assert checked > 45


def exact_signed_rank_p(differences: np.ndarray, alternative: str) -> float:
    """Reference: the exact null distribution of W+ by enumerating every sign pattern (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[differences > 0].sum()
    totals = np.array([sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in
                       itertools.product([0, 1], repeat=differences.size)])  # fmt: skip
    if alternative == "greater":
        return float(np.mean(totals >= observed))
    if alternative == "less":
        return float(np.mean(totals <= observed))
    return float(min(1.0, 2 * min(np.mean(totals >= observed), np.mean(totals <= observed))))


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_value_matches_exact_enumeration(alternative: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=9)
    b = a + rng.normal(0.3, 1.0, size=9)
    result = wilcoxon_paired(a, b, alternative=alternative)  # type: ignore[arg-type]
    assert result.p_value == pytest.approx(exact_signed_rank_p(a - b, alternative), rel=1e-9)


def test_summary_fields_describe_the_differences() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    b = np.array([2.0, 2.0, 5.0, 3.0, 9.0, 7.0])
    result = wilcoxon_paired(a, b)
    assert isinstance(result, PairedComparison)
    assert result.n_pairs == 6
    assert result.n_zero == 1
    assert result.median_difference == pytest.approx(np.median(a - b))
    assert result.mean_difference == pytest.approx(np.mean(a - b))
    assert result.fraction_a_lower == pytest.approx(4 / 6)
    statistic, p_value, n_pairs, median_difference, fraction_a_lower, *_ = result  # unpacks as a tuple
    assert (n_pairs, fraction_a_lower) == (6, pytest.approx(4 / 6))
    assert 0 < p_value <= 1 and statistic >= 0 and median_difference == -1.0
    assert result.to_dict()["n_pairs"] == 6


def test_clear_improvement_is_significant_and_noise_is_not() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.2, size=40)
    better = base * 0.7 + rng.normal(0, 0.002, size=40)
    assert wilcoxon_paired(better, base, alternative="less").p_value < 1e-6
    noise = base + rng.normal(0, 0.01, size=40)
    assert wilcoxon_paired(noise, base).p_value > 0.01


def test_all_equal_pairs_give_no_evidence() -> None:
    result = wilcoxon_paired([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert result.p_value == 1.0 and result.n_zero == 3 and result.fraction_a_lower == 0.0


@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=2, max_size=30))
@settings(max_examples=60, deadline=None)
def test_swapping_the_sides_mirrors_the_result(pairs: list[tuple[float, float]]) -> None:
    a, b = np.array(pairs).T
    forward, backward = wilcoxon_paired(a, b), wilcoxon_paired(b, a)
    assert forward.p_value == pytest.approx(backward.p_value)
    assert forward.median_difference == pytest.approx(-backward.median_difference, abs=1e-12)
    assert 0 <= forward.p_value <= 1
    assert forward.fraction_a_lower + backward.fraction_a_lower + forward.n_zero / len(
        pairs
    ) == pytest.approx(1)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0, 2.0], [1.0], "same length"),
        ([], [], "at least one pair"),
        ([1.0, float("nan")], [1.0, 2.0], "finite"),
        ([[1.0]], [[1.0]], "1-D"),
    ],
)
def test_bad_pairs_are_rejected(a: list, b: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilcoxon_paired(a, b)
    with pytest.raises(ValueError, match=message):
        bootstrap_mean_difference_ci(a, b)


def test_unknown_alternative_is_rejected() -> None:
    with pytest.raises(ValueError, match="alternative"):
        wilcoxon_paired([1.0], [2.0], alternative="smaller")  # type: ignore[arg-type]


def test_relative_change() -> None:
    assert relative_change(0.054, 0.1) == pytest.approx(-0.46)
    assert relative_change(1.1, 1.0) == pytest.approx(0.1)
    assert relative_change(-2.0, -1.0) == pytest.approx(-1.0)  # relative to the baseline's magnitude
    with pytest.raises(ValueError, match="baseline is 0"):
        relative_change(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        relative_change(float("nan"), 1.0)


def test_bootstrap_ci_is_seeded_and_covers_the_mean() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 1.0, 200), rng.normal(0.5, 1.0, 200)
    low, high = bootstrap_mean_difference_ci(a, b, seed=7)
    assert (low, high) == bootstrap_mean_difference_ci(a, b, seed=7)
    assert (low, high) != bootstrap_mean_difference_ci(a, b, seed=8)
    assert low < np.mean(a - b) < high
    # Normal-theory interval as a rough reference for the width.
    half_width = 1.96 * np.std(a - b, ddof=1) / np.sqrt(200)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    narrow = bootstrap_mean_difference_ci(a, b, seed=7, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_of_constant_differences_is_that_constant() -> None:
    low, high = bootstrap_mean_difference_ci([3.0, 4.0, 5.0], [1.0, 2.0, 3.0], n_resamples=50)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_bootstrap_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean_difference_ci([1.0], [2.0], n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_difference_ci([1.0], [2.0], confidence=1.0)
