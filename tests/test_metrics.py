"""Tests of ls_backend.metrics: hand-computed cases, reference implementations, torchmetrics, properties."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torchmetrics.functional.classification import binary_calibration_error

from ls_backend.metrics import (
    ace,
    brier_score,
    ece,
    nll,
    reliability_bins,
    reliability_curve,
    summarize,
    weighted_ace,
)

torch.set_num_threads(1)

SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8])
HITS = np.array([0, 0, 1, 0, 1, 1])


def reference_ace(scores: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    """The paper's equation 2 written plainly: np.array_split of the order sorted by (score, hit)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], hits[i]))
    gaps = [
        abs(np.mean(scores[b]) - np.mean(hits[b].astype(float)))
        for b in np.array_split(np.array(order), n_bins)
        if len(b)
    ]
    return float(np.mean(gaps))


def test_ace_by_hand() -> None:
    # sorted: [0.1 0.2 0.3 | 0.4 0.8 0.9], hits [0 0 1 | 0 1 1]
    # bin 1: |0.2 - 1/3| = 2/15; bin 2: |0.7 - 2/3| = 1/30; mean = 1/12
    assert ace(SCORES, HITS, n_bins=2) == pytest.approx(1 / 12, rel=1e-12)
    # one bin: |mean score - hit rate| = |2.7/6 - 0.5|
    assert ace(SCORES, HITS, n_bins=1) == pytest.approx(0.05, rel=1e-12)


def test_ace_uneven_and_empty_bins() -> None:
    scores, hits = np.array([0.9, 0.1, 0.5, 0.6, 0.2]), np.array([1, 0, 0, 1, 1])
    # array_split of 5 into 2 bins: sizes 3 and 2 -> [0.1 0.2 0.5 | 0.6 0.9], hits [0 1 0 | 1 1]
    expected = (abs(0.8 / 3 - 1 / 3) + abs(0.75 - 1.0)) / 2
    assert ace(scores, hits, n_bins=2) == pytest.approx(expected, rel=1e-12)
    # More bins than items: every item is its own bin; empty bins are skipped, not counted as zero.
    assert ace(scores, hits, n_bins=10) == pytest.approx(np.mean(np.abs(scores - hits)), rel=1e-12)


def test_ace_tied_scores_do_not_depend_on_order() -> None:
    scores, hits = np.full(4, 0.5), np.array([1, 0, 1, 0])
    # ties put misses first: bins [0 0 | 1 1] -> (0.5 + 0.5) / 2
    assert ace(scores, hits, n_bins=2) == pytest.approx(0.5)
    assert ace(scores, hits[::-1], n_bins=2) == ace(scores, hits, n_bins=2)


scores_hits = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=st.floats(0, 1) | st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        hnp.arrays(np.bool_, n),
    )
)


@settings(max_examples=80, deadline=None)
@given(scores_hits, st.integers(1, 15), st.randoms(use_true_random=False))
def test_ace_matches_reference_and_ignores_order(
    case: tuple[np.ndarray, np.ndarray], n_bins: int, random: Any
) -> None:
    scores, hits = case
    value = ace(scores, hits, n_bins)
    assert value == pytest.approx(reference_ace(scores, hits, n_bins), rel=1e-9, abs=1e-12)
    order = list(range(len(scores)))
    random.shuffle(order)
    assert ace(scores[order], hits[order], n_bins) == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert 0 <= value <= 1
    curve = reliability_curve(scores, hits, n_bins, strategy="quantile")
    filled = curve.count > 0
    gaps = np.abs(curve.mean_score[filled] - curve.hit_rate[filled])
    assert value == pytest.approx(gaps.mean(), rel=1e-9, abs=1e-12)


def test_ece_by_hand() -> None:
    # [0, 0.5): 0.1 0.2 0.3 0.4, mean 0.25, hit rate 0.25 -> 0; [0.5, 1]: 0.8 0.9, mean 0.85, hits 1 -> 0.15
    assert ece(SCORES, HITS, n_bins=2) == pytest.approx(0.15 * 2 / 6, rel=1e-12)


def test_ece_bin_edges() -> None:
    # 0.5 opens the upper bin; 1.0 closes the last bin; 0.0 opens the first.
    assert ece(np.array([0.5, 1.0]), np.array([0, 1]), n_bins=2) == pytest.approx(0.25)
    assert ece(np.array([0.0, 0.25]), np.array([0, 0]), n_bins=2) == pytest.approx(0.125)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 15), st.data())
def test_ece_matches_torchmetrics(n_bins: int, data: st.DataObject) -> None:
    # Scores on a bin edge go wherever float rounding of the edges puts them, and torchmetrics gives 1.0 a
    # bin of its own: compare on scores (bin + offset) / n_bins away from the edges.
    n = data.draw(st.integers(1, 60))
    bins = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_bins - 1)))
    offsets = data.draw(hnp.arrays(np.float64, n, elements=st.floats(1e-6, 1 - 1e-6)))
    scores, hits = (bins + offsets) / n_bins, data.draw(hnp.arrays(np.bool_, n))
    expected = binary_calibration_error(
        torch.from_numpy(scores), torch.from_numpy(hits.astype(np.int64)), n_bins=n_bins, norm="l1"
    )
    value = ece(scores, hits, n_bins)
    assert value == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
    curve = reliability_curve(scores, hits, n_bins, strategy="uniform")
    filled = curve.count > 0
    weighted = (np.abs(curve.mean_score - curve.hit_rate)[filled] * curve.count[filled]).sum() / len(scores)
    assert value == pytest.approx(weighted, rel=1e-9, abs=1e-12)


def test_ece_and_ace_of_a_perfectly_calibrated_sample_are_small() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200_000)
    hits = rng.random(200_000) < scores
    assert ece(scores, hits) < 0.01
    assert ace(scores, hits) < 0.01
    assert ace(scores, ~hits) > 0.4


def test_reliability_curve_shapes_and_edges() -> None:
    curve = reliability_curve(SCORES, HITS, n_bins=4, strategy="uniform")
    np.testing.assert_array_equal(curve.edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(curve.count, [2, 2, 0, 2])
    assert np.isnan(curve.mean_score[2]) and np.isnan(curve.hit_rate[2])
    np.testing.assert_allclose(curve.hit_rate[[0, 1, 3]], [0.0, 0.5, 1.0])
    quantile = reliability_curve(SCORES, HITS, n_bins=3)
    np.testing.assert_array_equal(quantile.count, [2, 2, 2])
    np.testing.assert_array_equal(quantile.edges, [0.1, 0.3, 0.8, 0.9])
    np.testing.assert_allclose(quantile.mean_score, [0.15, 0.35, 0.85])
    d = curve.to_dict()
    assert d["mean_score"][2] is None and d["count"] == [2, 2, 0, 2]
    with pytest.raises(ValueError, match="strategy"):
        reliability_curve(SCORES, HITS, strategy="kmeans")  # type: ignore[arg-type]


def test_brier_and_nll_by_hand() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    labels = np.array([0, 2])
    # item 1: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; item 2: 0.25 + 0.25 + 1 = 1.5
    assert brier_score(probs, labels) == pytest.approx((0.14 + 1.5) / 2, rel=1e-12)
    assert nll(probs, labels) == pytest.approx((-np.log(0.7) - np.log(1e-15)) / 2, rel=1e-12)
    assert nll(probs[:1], labels[:1]) == pytest.approx(-np.log(0.7))


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(2, 6)), elements=st.floats(0.01, 1)),
    st.data(),
)
def test_brier_matches_one_hot_reference(raw: np.ndarray, data: st.DataObject) -> None:
    probs = raw / raw.sum(axis=1, keepdims=True)
    labels = np.array(
        data.draw(st.lists(st.integers(0, probs.shape[1] - 1), min_size=len(probs), max_size=len(probs)))
    )
    one_hot = np.eye(probs.shape[1])[labels]
    assert brier_score(probs, labels) == pytest.approx(
        ((probs - one_hot) ** 2).sum(axis=1).mean(), rel=1e-9, abs=1e-12
    )
    assert nll(probs, labels) == pytest.approx(
        -np.log(probs[np.arange(len(labels)), labels]).mean(), rel=1e-9
    )


def test_summarize() -> None:
    values = [1.0, 2.0, np.nan, 3.0, 4.0, 10.0]
    summary = summarize(values)
    finite = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    assert summary["n"] == 5 and summary["n_nan"] == 1
    assert summary["mean"] == pytest.approx(4.0)
    assert summary["std"] == pytest.approx(finite.std(ddof=1))
    assert summary["median"] == 3.0
    assert summary["q25"] == 2.0 and summary["q75"] == 4.0 and summary["iqr"] == 2.0
    single = summarize([np.nan, 0.5])
    assert single["n"] == 1 and single["mean"] == 0.5 and np.isnan(single["std"])
    assert summarize([np.nan])["n"] == 0 and np.isnan(summarize([np.nan])["mean"])
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


@pytest.mark.parametrize(
    ("scores", "hits", "n_bins", "message"),
    [
        (np.array([0.5, 0.6]), np.array([1]), 10, "same length"),
        (np.array([]), np.array([]), 10, "empty"),
        (np.array([0.5, np.nan]), np.array([1, 0]), 10, "NaN"),
        (np.array([0.5, 1.5]), np.array([1, 0]), 10, r"\[0, 1\]"),
        (np.array([0.5, 0.6]), np.array([1, 2]), 10, "0/1"),
        (np.array([0.5, 0.6]), np.array([1, 0]), 0, "n_bins"),
        (np.array([[0.5, 0.6]]), np.array([[1, 0]]), 10, "1-D"),
    ],
)
@pytest.mark.parametrize("metric", [ace, ece, reliability_curve])
def test_calibration_metrics_reject_bad_input(
    metric: Any, scores: np.ndarray, hits: np.ndarray, n_bins: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        metric(scores, hits, n_bins)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.array([[0.5, 0.5]]), np.array([0, 1]), "shape"),
        (np.array([[0.5, 0.5]]), np.array([2]), "outside the classes"),
        (np.array([[0.5, 0.6]]), np.array([0]), "sum to 1"),
        (np.array([[np.nan, 1.0]]), np.array([0]), "NaN"),
        (np.zeros((0, 2)), np.array([], dtype=int), "empty"),
        (np.array([0.5, 0.5]), np.array([0]), r"shape \(n, C\)"),
    ],
)
@pytest.mark.parametrize("metric", [brier_score, nll])
def test_probability_metrics_reject_bad_input(
    metric: Any, probs: np.ndarray, labels: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        metric(probs, labels)


def test_roc_auc_by_hand_with_ties_and_degenerate_cases() -> None:
    from ls_backend.metrics import roc_auc

    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == pytest.approx(0.5)  # all tied
    assert roc_auc([3, 2, 1], [1, 0, 0]) == 1.0
    assert roc_auc([3, 2, 1], [0, 1, 1]) == 0.0
    assert np.isnan(roc_auc([1, 2], [1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([1, 2], [0, 2])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([1, 2, 3], [0, 1])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_roc_auc_matches_torchmetrics(data: st.DataObject) -> None:
    from torchmetrics.functional.classification import binary_auroc

    from ls_backend.metrics import roc_auc

    n = data.draw(st.integers(2, 60))
    margins = data.draw(hnp.arrays(np.float64, n, elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 2.0, 3.5])))
    positives = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1)))
    if positives.min() == positives.max():
        positives[0] = 1 - positives[0]
    expected = binary_auroc(torch.tensor(margins), torch.tensor(positives)).item()
    assert roc_auc(margins, positives) == pytest.approx(expected, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 7), st.floats(0.1, 5.0), st.integers(0, 10_000))
def test_weighted_ace_with_equal_weights_is_ace(n: int, n_bins: int, weight: float, seed: int) -> None:
    """One binning rule: any n (divisible by n_bins or not), any common weight, ties included."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(n), 1)
    hits = rng.random(n) < scores
    expected = ace(scores, hits, n_bins)
    assert weighted_ace(scores, hits, None, n_bins) == pytest.approx(expected, abs=1e-12)
    assert weighted_ace(scores, hits, np.full(n, weight), n_bins) == pytest.approx(expected, abs=1e-12)
    curve = reliability_bins(scores, hits, None, n_bins)
    gaps = np.abs(np.array(curve["mean_score"]) - np.array(curve["hit_rate"]))
    assert gaps.mean() == pytest.approx(expected, abs=1e-12) and sum(curve["count"]) == n


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(0, 10_000))
def test_an_integer_weight_is_the_item_repeated(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(n), 1)
    hits = rng.random(n) < scores
    weights = rng.integers(1, 4, n)
    repeated = weighted_ace(np.repeat(scores, weights), np.repeat(hits, weights), None, 1)
    assert weighted_ace(scores, hits, weights.astype(float), 1) == pytest.approx(repeated)


def test_weighted_ace_refuses_bad_weights() -> None:
    scores, hits = np.array([0.2, 0.9]), np.array([False, True])
    with pytest.raises(ValueError, match="weights must"):
        weighted_ace(scores, hits, np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        weighted_ace(scores, hits, np.array([1.0]))
