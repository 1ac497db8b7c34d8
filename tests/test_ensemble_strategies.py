"""Answer strategies, bins and classification metrics of the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ls_backend.ensemble import bins as bins_mod
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.ensemble.strategies import (
    Strategy,
    default_strategies,
    get_strategy,
    majority_vote,
    most_confident,
    register_strategy,
    resolve_strategies,
    weighted_majority_vote,
)


def reference_vote(answers: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """Loop version of the documented rule: most weight wins; ties go to the class of the latest voter."""
    result = []
    for i in range(answers.shape[1]):
        totals = [0.0] * n_classes
        latest = [-1] * n_classes
        for j in range(answers.shape[0]):
            totals[answers[j, i]] += weights[j, i]
            latest[answers[j, i]] = j
        best = max(totals)
        result.append(max((c for c in range(n_classes) if totals[c] == best), key=lambda c: latest[c]))
    return np.array(result)


@st.composite
def votes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    k = draw(st.integers(1, 4))
    n = draw(st.integers(1, 30))
    n_classes = draw(st.integers(2, 4))
    answers = draw(arrays(np.int64, (k, n), elements=st.integers(0, n_classes - 1)))
    # Few distinct score values so that ties actually happen.
    scores = draw(arrays(np.float64, (k, n), elements=st.sampled_from([0.25, 0.5, 0.75, 1.0])))
    return answers, scores, n_classes


@settings(max_examples=150, deadline=None)
@given(votes())
def test_votes_match_the_documented_rule(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    answers, scores, n_classes = data
    np.testing.assert_array_equal(
        majority_vote(answers, scores, n_classes), reference_vote(answers, np.ones(answers.shape), n_classes)
    )
    np.testing.assert_array_equal(
        weighted_majority_vote(answers, scores, n_classes), reference_vote(answers, scores, n_classes)
    )
    expected = [
        answers[max(range(answers.shape[0]), key=lambda j: (scores[j, i], j)), i]
        for i in range(answers.shape[1])
    ]
    np.testing.assert_array_equal(most_confident(answers, scores, n_classes), expected)


def test_tie_rules_on_examples() -> None:
    answers = np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0]])
    scores = np.array([[0.9, 0.5, 0.5], [0.9, 0.5, 0.5], [0.5, 0.9, 0.9]])
    # Item 0: one vote each, the latest LLM (2) answered class 2. Item 2: class 2 has two votes.
    np.testing.assert_array_equal(majority_vote(answers, scores, 3), [2, 2, 2])
    # Weighted: item 0 has 0.9 for classes 0 and 1 -> class 1 (LLM 1 is later); item 2: 1.0 for 2 > 0.9.
    np.testing.assert_array_equal(weighted_majority_vote(answers, scores, 3), [1, 2, 2])
    # Item 0: LLMs 0 and 1 tie at 0.9 -> LLM 1's answer.
    np.testing.assert_array_equal(most_confident(answers, scores, 3), [1, 2, 0])


def test_library_names_and_levels() -> None:
    names = [s.name for s in default_strategies(3)]
    assert names == ["llm0", "llm1", "llm2", "majority", "weighted_majority", "most_confident"]
    assert get_strategy("llm7").min_llms == 8
    with pytest.raises(KeyError, match="unknown answer strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="need more than the 2 LLMs"):
        resolve_strategies(["llm2", "llm0"], 2)
    with pytest.raises(ValueError, match="cheapest LLM alone"):
        resolve_strategies(["majority"], 3)


def test_user_strategy_is_registered_and_checked() -> None:
    def always_zero(answers: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
        return np.zeros(answers.shape[1], dtype=np.int64)

    strategy = Strategy("test_always_zero", always_zero, min_llms=1)
    register_strategy(strategy, overwrite=True)
    assert get_strategy("test_always_zero") is strategy
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(strategy)
    with pytest.raises(ValueError, match="reserved"):
        register_strategy(Strategy("llm3", always_zero))
    broken = Strategy("broken", lambda a, s, c: np.zeros(3), min_llms=1)
    with pytest.raises(ValueError, match="returned shape"):
        broken(np.zeros((1, 5), dtype=np.int64), np.zeros((1, 5)), 2)


def test_bins_and_keys() -> None:
    edges = np.array([0.5, 0.8])
    np.testing.assert_array_equal(
        bins_mod.digitize(np.array([0.0, 0.5, 0.79, 0.8, 1.0]), edges), [0, 1, 1, 2, 2]
    )
    n_bins = np.array([3, 2, 4])
    bin_vectors = np.array([[2, 0, 1], [1, 1, 0], [3, 0, 2]])
    keys = bins_mod.encode_keys(bin_vectors, n_bins)
    for i in range(3):
        for k in range(3):
            assert bins_mod.decode_key(int(keys[k, i]), n_bins[: k + 1].tolist()) == tuple(
                bin_vectors[: k + 1, i]
            )
    assert bins_mod.level_sizes(n_bins).tolist() == [3, 6, 24]
    with pytest.raises(ValueError, match="sorted"):
        bins_mod.check_edges([[0.5, 0.2]])
    q = bins_mod.quantile_edges(np.arange(100.0), 4)
    assert np.all(np.diff(q) > 0) and len(q) == 3


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 4).flatmap(
        lambda c: st.tuples(
            st.just(c),
            arrays(np.int64, (2, 25), elements=st.integers(0, c - 1)),
        )
    )
)
def test_precision_recall_f1_match_scikit_learn(data: tuple[int, np.ndarray]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    n_classes, pair = data
    labels, predictions = pair
    macro = precision_recall_f1(labels, predictions, n_classes)
    for name, func in (("precision", metrics.precision_score), ("recall", metrics.recall_score),
                       ("f1", metrics.f1_score)):  # fmt: skip
        assert macro[name] == pytest.approx(func(labels, predictions, average="macro", zero_division=0))
        binary = precision_recall_f1(labels, predictions, n_classes, positive_class=1)
        expected = func(labels, predictions, labels=[1], average="macro", zero_division=0)
        assert binary[name] == pytest.approx(expected)
    batched = precision_recall_f1(np.stack([labels, predictions]), np.stack([predictions, labels]), n_classes)
    assert batched["f1"].shape == (2,)
    assert batched["f1"][0] == pytest.approx(macro["f1"])
