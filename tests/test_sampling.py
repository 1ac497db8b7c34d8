from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend import sampling
from ls_backend.sampling import (
    cluster_tasks,
    error_strata,
    importance_weights,
    inclusion_probabilities,
    oot_source_tasks,
    sample,
    sample_importance_by_error,
    sample_stratified_by_error,
    sample_uniform,
    surrogate_error,
)


def skewed_errors(n: int = 400, seed: int = 0) -> np.ndarray:
    """Most items nearly calibrated, a few far off: the shape surrogate errors usually have."""
    return np.random.default_rng(seed).exponential(0.05, size=n) ** 2


def test_surrogate_error_is_absolute_difference() -> None:
    np.testing.assert_allclose(
        surrogate_error(np.array([0.9, 0.5, 0.2]), np.array([0.7, 0.6, 0.2])), [0.2, 0.1, 0]
    )


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros(3), np.zeros(4), "shape"),
        (np.array([0.1, np.nan]), np.zeros(2), "NaN"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "one-dimensional"),
    ],
)
def test_surrogate_error_rejects_bad_input(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        surrogate_error(a, b)


@pytest.mark.parametrize("method", sampling.SAMPLERS)
def test_draws_are_distinct_in_range_and_reproducible(method: sampling.SamplerName) -> None:
    errors = skewed_errors()
    for k in (0, 1, 7, 50, 400):
        first = sample(method, errors, k, np.random.default_rng(3))
        again = sample(method, errors, k, np.random.default_rng(3))
        assert first.dtype == np.int64 and first.shape == (k,)
        assert np.unique(first).size == k
        assert k == 0 or (first.min() >= 0 and first.max() < errors.size)
        np.testing.assert_array_equal(first, again)
    assert not np.array_equal(
        sample(method, errors, 50, np.random.default_rng(1)),
        sample(method, errors, 50, np.random.default_rng(2)),
    )


@pytest.mark.parametrize("method", sampling.SAMPLERS)
def test_budget_errors(method: sampling.SamplerName) -> None:
    errors = skewed_errors(10)
    with pytest.raises(ValueError, match="cannot draw 11 distinct items from 10"):
        sample(method, errors, 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match=">= 0"):
        sample(method, errors, -1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="integer"):
        sample(method, errors, 2.5, np.random.default_rng(0))  # type: ignore[arg-type]


def test_bad_errors_and_unknown_sampler() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        sample_importance_by_error(np.array([0.1, -0.2]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        sample_stratified_by_error(np.array([0.1, np.nan]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("XX", np.zeros(3), 1, np.random.default_rng(0))  # type: ignore[arg-type]


def test_se_and_ie_favour_high_error_items_over_uniform() -> None:
    errors = skewed_errors()
    k, seeds = 20, range(300)
    mean_drawn = {
        method: np.mean([errors[sample(method, errors, k, np.random.default_rng(s))].mean() for s in seeds])
        for method in sampling.SAMPLERS
    }
    top_quarter = errors >= np.quantile(errors, 0.75)
    share_top = {
        method: np.mean(
            [top_quarter[sample(method, errors, k, np.random.default_rng(s))].mean() for s in seeds]
        )
        for method in sampling.SAMPLERS
    }
    assert abs(mean_drawn["U"] - errors.mean()) < 0.2 * errors.mean()  # U is unbiased
    assert mean_drawn["SE"] > 1.5 * mean_drawn["U"]
    assert mean_drawn["IE"] > 1.5 * mean_drawn["U"]
    assert share_top["SE"] > share_top["U"] + 0.2
    assert share_top["IE"] > share_top["U"] + 0.2


def test_error_strata_hold_equal_error_mass_and_are_ordered() -> None:
    errors = skewed_errors(1000)
    strata = error_strata(errors, 4)
    assert set(strata.tolist()) == {0, 1, 2, 3}
    mass = (
        np.bincount(strata, weights=sampling.floored_errors(errors)) / sampling.floored_errors(errors).sum()
    )
    np.testing.assert_allclose(mass, 0.25, atol=0.05)
    # higher strata contain higher errors, and fewer items
    for h in range(3):
        assert errors[strata == h].max() <= errors[strata == h + 1].min()
    assert np.all(np.diff(np.bincount(strata)) < 0)


def test_equal_errors_give_equal_count_strata() -> None:
    strata = error_strata(np.zeros(12), 4)
    np.testing.assert_array_equal(np.bincount(strata), [3, 3, 3, 3])


def test_stratified_draw_is_balanced_across_strata() -> None:
    errors = skewed_errors(1000)
    strata = error_strata(errors, 4)
    for k, seed in [(20, 0), (22, 1), (3, 2), (40, 3)]:
        counts = np.bincount(
            strata[sample_stratified_by_error(errors, k, np.random.default_rng(seed))], minlength=4
        )
        assert counts.sum() == k
        assert counts.max() - counts.min() <= 1


def test_stratified_draw_fills_small_strata_then_spreads_the_rest() -> None:
    # one huge error: the top stratum holds that single item
    errors = np.concatenate([np.full(99, 0.01), [10.0]])
    strata = error_strata(errors, 4)
    assert np.bincount(strata).tolist() == [99, 1]  # mass 0.01*99 ~ 0.09 < 1/4: strata 1-3 collapse into one
    drawn = sample_stratified_by_error(errors, 10, np.random.default_rng(0))
    assert 99 in drawn and drawn.size == 10


def test_stratified_remainder_goes_to_random_strata() -> None:
    errors = skewed_errors(1000)
    strata = error_strata(errors, 4)
    lucky = [
        int(
            np.argmax(
                np.bincount(
                    strata[sample_stratified_by_error(errors, 1, np.random.default_rng(s))], minlength=4
                )
            )
        )
        for s in range(200)
    ]
    assert set(lucky) == {0, 1, 2, 3}


def test_importance_inclusion_frequency_rises_with_error() -> None:
    errors = np.repeat([0.0, 0.01, 0.05, 0.2], 25)
    k, runs = 10, 2000
    counts = np.zeros(errors.size)
    for s in range(runs):
        counts[sample_importance_by_error(errors, k, np.random.default_rng(s))] += 1
    frequency = counts / runs
    per_level = frequency.reshape(4, 25).mean(axis=1)
    assert np.all(np.diff(per_level) > 0)
    assert per_level[0] > 0  # zero errors are floored, not excluded
    # Rosén's approximation of the inclusion probabilities matches the measured frequencies
    predicted = sampling.importance_inclusion_probabilities(errors, k)
    np.testing.assert_allclose(predicted.reshape(4, 25).mean(axis=1), per_level, rtol=0.1, atol=0.005)
    assert predicted.sum() == pytest.approx(k)


def test_importance_draw_with_all_zero_errors_is_uniform() -> None:
    counts = np.zeros(10)
    for s in range(1000):
        counts[sample_importance_by_error(np.zeros(10), 3, np.random.default_rng(s))] += 1
    np.testing.assert_allclose(counts / 1000, 0.3, atol=0.06)


def test_inclusion_probabilities_and_weights() -> None:
    errors = skewed_errors(100)
    rng = np.random.default_rng(0)
    u = sample_uniform(100, 10, rng)
    np.testing.assert_allclose(inclusion_probabilities("U", errors, u), 0.1)
    se = sample_stratified_by_error(errors, 12, rng)
    strata = error_strata(errors)
    p = inclusion_probabilities("SE", errors, se)
    sizes = np.bincount(strata)
    np.testing.assert_allclose(
        p, np.bincount(strata[se], minlength=sizes.size)[strata[se]] / sizes[strata[se]]
    )
    assert np.all(p[strata[se] == strata.max()] > p[strata[se] == 0])
    w = importance_weights(p)
    assert w.mean() == pytest.approx(1.0)
    assert np.all(w[strata[se] == strata.max()] < w[strata[se] == 0])
    np.testing.assert_allclose(inclusion_probabilities("IE", errors, np.arange(100)), 1.0)
    assert inclusion_probabilities("IE", errors, np.zeros(0, dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="distinct"):
        inclusion_probabilities("U", errors, np.array([1, 1]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        importance_weights(np.array([0.0, 0.5]))


def test_se_weighted_mean_estimates_the_task_mean() -> None:
    """Horvitz-Thompson weights undo the oversampling of high errors (what weighted fitting relies on)."""
    errors = skewed_errors(500)
    estimates = []
    for s in range(300):
        drawn = sample_stratified_by_error(errors, 40, np.random.default_rng(s))
        w = importance_weights(inclusion_probabilities("SE", errors, drawn))
        estimates.append(np.average(errors[drawn], weights=w))
    assert np.mean(estimates) == pytest.approx(errors.mean(), rel=0.05)


@settings(max_examples=60, deadline=None)
@given(
    errors=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60),
    fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
    n_strata=st.integers(1, 8),
)
def test_property_every_sampler_returns_k_distinct_items(
    errors: list[float], fraction: float, seed: int, n_strata: int
) -> None:
    e = np.array(errors)
    k = round(fraction * e.size)
    for method in sampling.SAMPLERS:
        drawn = sample(method, e, k, np.random.default_rng(seed), n_strata=n_strata)
        assert drawn.size == k and np.unique(drawn).size == k
        p = inclusion_probabilities(method, e, drawn, n_strata=n_strata)
        assert np.all((p > 0) & (p <= 1 + 1e-9))


def test_cluster_tasks_separates_obvious_groups() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(3, 16) * 5
    groups = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2])
    x = centers[groups] + rng.normal(0, 0.3, size=(groups.size, 16))
    methods: tuple[Literal["agglomerative", "kmeans"], ...] = ("agglomerative", "kmeans")
    for method in methods:
        labels = cluster_tasks(x, 3, method=method, seed=1)
        assert labels[0] == 0  # numbered in order of first appearance
        # same partition as the groups
        for i in range(groups.size):
            for j in range(groups.size):
                assert (labels[i] == labels[j]) == (groups[i] == groups[j])
    np.testing.assert_array_equal(
        cluster_tasks(x, 3, "kmeans", seed=4), cluster_tasks(x, 3, "kmeans", seed=4)
    )
    assert cluster_tasks(x, 1).tolist() == [0] * groups.size
    assert cluster_tasks(x[:2], 5).tolist() == [0, 1]  # more clusters than tasks: each alone
    with pytest.raises(ValueError, match="NaN"):
        cluster_tasks(np.array([[np.nan, 1.0]]), 1)
    with pytest.raises(ValueError, match="unknown clustering"):
        cluster_tasks(x, 2, method="spectral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all zeros"):
        cluster_tasks(np.zeros((2, 3)), 2)


def test_cluster_uses_cosine_not_euclidean_distance() -> None:
    # same directions, very different lengths: cosine groups by direction
    x = np.array([[1.0, 0.0], [100.0, 1.0], [0.0, 1.0], [1.0, 50.0]])
    np.testing.assert_array_equal(cluster_tasks(x, 2), [0, 0, 1, 1])


def test_oot_sources_all_and_sim() -> None:
    names = ["a", "b", "c", "d", "e"]
    clusters = np.array([0, 0, 1, 1, 2])
    all_oot = oot_source_tasks("a", names)
    assert (
        all_oot.tasks == ("b", "c", "d", "e") and all_oot.scenario == "ALL-OOT" and all_oot.fallback is None
    )
    sim = oot_source_tasks("c", names, clusters)
    assert sim.tasks == ("d",) and sim.scenario == "SIM-OOT" and sim.fallback is None
    assert oot_source_tasks("a", names, clusters, eligible={"a", "c", "d"}).tasks == ("c", "d")
    assert oot_source_tasks("a", names, eligible=set()).tasks == ()


def test_oot_sources_fallback_when_alone_in_cluster() -> None:
    names = ["a", "b", "c", "d", "e"]
    clusters = np.array([0, 0, 1, 1, 2])
    alone = oot_source_tasks("e", names, clusters)
    assert alone.tasks == ("a", "b", "c", "d") and alone.fallback is not None and "ALL-OOT" in alone.fallback
    embeddings = np.array([[1.0, 0, 0], [1.0, 0.1, 0], [0, 1.0, 0], [0, 1.0, 0.1], [0.1, 0.9, 0.5]])
    nearest = oot_source_tasks("e", names, clusters, embeddings=embeddings)
    assert nearest.tasks == ("c", "d") and nearest.fallback is not None and "nearest" in nearest.fallback
    with pytest.raises(ValueError, match="not among"):
        oot_source_tasks("z", names)
    with pytest.raises(ValueError, match="one label per task"):
        oot_source_tasks("a", names, clusters[:3])
