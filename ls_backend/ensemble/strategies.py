"""Answer strategies: functions from the first k LLMs' answers and scores to one answer per item.

A strategy is called with ``answers`` of shape ``(k, n)`` (class indices), ``scores`` of shape ``(k, n)`` (the
confidence of each answer, usually calibrated) and ``n_classes``; it returns ``(n,)`` class indices. Row 0 is the
cheapest LLM. A strategy declares ``min_llms``, the number of LLMs it needs; at cascade level k (k LLMs asked) the
strategies with ``min_llms <= k`` are available.

The default library for L LLMs, in this order (the order breaks ties between strategies with equal hits):

- ``llm0`` ... ``llm{L-1}``: one LLM's answer (0 = cheapest); ``llm{j}`` needs j + 1 LLMs.
- ``majority``: the class with the most votes among the k LLMs (needs 2).
- ``weighted_majority``: the paper's equation 1 as implemented here: every LLM votes for its answer with weight
  equal to its score (its calibrated confidence in that answer), and the class with the largest total weight
  wins (needs 2).
- ``most_confident``: the answer of the LLM with the highest score (needs 2).

Ties (classes with equal votes or equal total weight, LLMs with equal scores) go to the most expensive LLM
involved: among the tied classes, the one answered by the highest-indexed LLM wins. Costlier LLMs are usually
the more accurate ones, and the rule is deterministic. Equality is exact (no tolerance).

Users extend the library with :func:`register_strategy`; strategies are referred to by name in saved policies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

StrategyFunc = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    """A named answer strategy that needs at least ``min_llms`` LLMs."""

    name: str
    func: StrategyFunc
    min_llms: int = 1

    def __call__(self, answers: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
        if answers.shape[0] < self.min_llms:
            raise ValueError(f"strategy {self.name!r} needs {self.min_llms} LLMs, got {answers.shape[0]}")
        result = np.asarray(self.func(answers, scores, n_classes))
        if result.shape != answers.shape[1:]:
            raise ValueError(
                f"strategy {self.name!r} returned shape {result.shape}, expected {answers.shape[1:]}"
            )
        return result.astype(np.int64, copy=False)


def _vote(answers: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """The class with the largest total weight; ties go to the class answered by the highest-indexed LLM."""
    n_llms, n_items = answers.shape
    items = np.arange(n_items)
    flat_totals = np.zeros(n_classes * n_items)
    flat_latest = np.full(n_classes * n_items, -1, dtype=np.int64)
    # One LLM answers each item once, so the fancy-indexed += has no repeated cells. Rows are visited cheapest
    # first: the last write per cell is the most expensive LLM that voted for it.
    for j in range(n_llms):
        cells = answers[j] * n_items + items
        flat_totals[cells] += weights[j]
        flat_latest[cells] = j
    totals = flat_totals.reshape(n_classes, n_items)
    latest = flat_latest.reshape(n_classes, n_items)
    winner = np.zeros(n_items, dtype=np.int64)
    best_total, best_latest = totals[0], latest[0]
    for c in range(1, n_classes):  # classes are few; each step is vectorized over the items
        better = (totals[c] > best_total) | ((totals[c] == best_total) & (latest[c] > best_latest))
        winner[better] = c
        best_total = np.where(better, totals[c], best_total)
        best_latest = np.where(better, latest[c], best_latest)
    return winner


def majority_vote(answers: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    """The class with the most votes; ties go to the class answered by the most expensive LLM among them."""
    return _vote(answers, np.ones(answers.shape, dtype=np.float64), n_classes)


def weighted_majority_vote(answers: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    """Paper's equation 1: argmax over classes c of the sum of scores of the LLMs that answered c."""
    return _vote(answers, np.asarray(scores, dtype=np.float64), n_classes)


def most_confident(answers: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    """The answer of the LLM with the highest score; equal scores go to the most expensive LLM."""
    k = answers.shape[0]
    best = k - 1 - np.argmax(scores[::-1], axis=0)
    return answers[best, np.arange(answers.shape[1])]


def single_llm(index: int) -> Strategy:
    """The strategy that returns LLM ``index``'s answer (0 = cheapest)."""
    if index < 0:
        raise ValueError(f"LLM index must be >= 0, got {index}")

    def answer_of(answers: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
        return answers[index]

    return Strategy(f"llm{index}", answer_of, min_llms=index + 1)


_REGISTRY: dict[str, Strategy] = {
    "majority": Strategy("majority", majority_vote, min_llms=2),
    "weighted_majority": Strategy("weighted_majority", weighted_majority_vote, min_llms=2),
    "most_confident": Strategy("most_confident", most_confident, min_llms=2),
}
_SINGLE = re.compile(r"llm(\d+)")


def register_strategy(strategy: Strategy, overwrite: bool = False) -> None:
    """Make a user strategy available by name (for :func:`get_strategy` and for loading saved policies)."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"expected a Strategy, got {type(strategy).__name__}")
    if _SINGLE.fullmatch(strategy.name):
        raise ValueError(f"strategy names of the form 'llm<j>' are reserved, got {strategy.name!r}")
    if strategy.name in _REGISTRY and not overwrite:
        raise ValueError(f"a strategy named {strategy.name!r} is already registered")
    if strategy.min_llms < 1:
        raise ValueError(f"min_llms must be >= 1, got {strategy.min_llms}")
    _REGISTRY[strategy.name] = strategy


def get_strategy(name: str) -> Strategy:
    """A strategy by name: ``llm<j>`` or a registered one."""
    match = _SINGLE.fullmatch(name)
    if match:
        return single_llm(int(match.group(1)))
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown answer strategy {name!r}; known: 'llm<j>', {sorted(_REGISTRY)} (see register_strategy)"
        ) from None


def default_strategies(n_llms: int) -> tuple[Strategy, ...]:
    """Each single LLM (cheapest first), then majority, weighted majority and most confident."""
    if n_llms < 1:
        raise ValueError(f"need at least one LLM, got {n_llms}")
    singles = tuple(single_llm(j) for j in range(n_llms))
    return (*singles, _REGISTRY["majority"], _REGISTRY["weighted_majority"], _REGISTRY["most_confident"])


def resolve_strategies(strategies: Sequence[Strategy | str] | None, n_llms: int) -> tuple[Strategy, ...]:
    """Strategies from objects or names (None: the default library), checked against the number of LLMs."""
    if strategies is None:
        return default_strategies(n_llms)
    resolved = tuple(s if isinstance(s, Strategy) else get_strategy(s) for s in strategies)
    if not resolved:
        raise ValueError("need at least one answer strategy")
    names = [s.name for s in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate strategy names in {names}")
    if not any(s.min_llms <= 1 for s in resolved):
        raise ValueError(f"no strategy works with the cheapest LLM alone (min_llms 1): {names}")
    too_big = [s.name for s in resolved if s.min_llms > n_llms]
    if too_big:
        raise ValueError(f"strategies {too_big} need more than the {n_llms} LLMs available")
    return resolved


def level_strategy_ids(strategies: Sequence[Strategy], n_llms: int) -> list[np.ndarray]:
    """For each level k = 1..L (index k-1), the ids (positions in ``strategies``) available with k LLMs."""
    return [
        np.array([i for i, s in enumerate(strategies) if s.min_llms <= k], dtype=np.int64)
        for k in range(1, n_llms + 1)
    ]
