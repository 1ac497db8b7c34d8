"""The cascade policy: training (the paper's Algorithm 1), staged inference (Algorithm 2), explanations, JSON.

Training works on all L LLMs' answers and scores for labeled items. Every item has a key at every level k (its
first k bin indices, see :mod:`ls_backend.ensemble.bins`). Bottom-up from level L to level 1, each key chooses
between *answering now* with the best strategy available with k LLMs, and *going deeper* (the sum of the best
values of its children at level k + 1); it goes deeper only when that is strictly better.

The value of answering now with strategy s at a key is ``hits(s) - lam * cost``, where ``cost`` sums over the key's
items the cost of the k LLMs asked so far; ``lam = 0`` is the paper's hits-only Algorithm 1, larger ``lam`` trades
hits for cost (see :mod:`ls_backend.ensemble.frontier`).

Ties are exact and deterministic: between strategies, the most hits wins and equal hits go to the first strategy
in the library order (so the cheaper single LLM); between answering now and going deeper, going deeper must be
strictly better.

Unseen keys (no training item has them; they occur at inference): the key answers now, with the level-k strategy
that has the most hits on the training items of its parent key (at level 1: on all training items). Such a key is
only reached when its parent chose to go deeper, so LLM k has been paid for; the rule uses that answer rather than
spend more on a region the training data never saw, and it prefers what worked on the nearest region that was
seen. Unseen keys never go deeper.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ls_backend.ensemble._checks import (
    check_answers_scores,
    check_labels,
    infer_n_classes,
    item_costs,
)
from ls_backend.ensemble.bins import check_edges, decode_key, digitize, encode_keys, level_sizes, n_bins_of
from ls_backend.ensemble.strategies import Strategy, get_strategy, level_strategy_ids, resolve_strategies

GO_DEEPER = -1
"""Action code of a key that asks the next LLM."""
NOT_REACHED = -2
"""Action code in a :class:`CascadeResult` for the levels an item never reached."""

FORMAT_VERSION = 1

ScoreFunction = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``score_llm(k, item_indices) -> (answers, scores)``: ask LLM k (0 = cheapest) about some items."""


# --------------------------------------------------------------------------------------------------------------
# The vectorized core, batched over R independent training sets (R = 1 for one policy, R = splits in tuning)


def level_predictions(
    answers: np.ndarray, scores: np.ndarray, strategies: Sequence[Strategy], n_classes: int
) -> list[np.ndarray]:
    """Every available strategy's answer at every level: per level k (index k-1), shape (S_k, n)."""
    n_llms = answers.shape[0]
    result = []
    for k, ids in enumerate(level_strategy_ids(strategies, n_llms), start=1):
        result.append(np.stack([strategies[i](answers[:k], scores[:k], n_classes) for i in ids]))
    return result


def cumulative_costs(costs: np.ndarray) -> np.ndarray:
    """Cost of asking the first k LLMs, per item: (L, n) with row k-1 the sum of rows 0..k-1 of ``costs``."""
    return np.cumsum(costs, axis=0)


def aggregate_levels(
    keys: Sequence[np.ndarray],
    hits: Sequence[np.ndarray],
    cum_costs: Sequence[np.ndarray] | None,
    sizes: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per-key sums by bincount, batched: keys[k] (R, m) and hits[k] (R, S_k, m) (bool, or float weights) give
    hit sums (R, S_k, K_k), counts (R, K_k) and cost sums (R, K_k) (zeros when ``cum_costs`` is None)."""
    hit_sums, counts, cost_sums = [], [], []
    for k, size in enumerate(sizes):
        n_keys = int(size)
        n_sets, n_strategies, _ = hits[k].shape
        cell = (np.arange(n_sets)[:, None] * n_keys + keys[k]).ravel() if n_sets > 1 else keys[k].ravel()
        sums = np.empty((n_sets, n_strategies, n_keys))
        for s in range(n_strategies):
            strategy_hits = hits[k][:, s, :].ravel()
            if strategy_hits.dtype == np.bool_:  # counting the hits' cells is faster than weighting all cells
                per_cell = np.bincount(cell[strategy_hits], minlength=n_sets * n_keys)
            else:
                per_cell = np.bincount(cell, weights=strategy_hits, minlength=n_sets * n_keys)
            sums[:, s, :] = per_cell.reshape(n_sets, n_keys)
        hit_sums.append(sums)
        counts.append(np.bincount(cell, minlength=n_sets * n_keys).reshape(n_sets, n_keys))
        if cum_costs is None:
            cost_sums.append(np.zeros((n_sets, n_keys)))
        else:
            cost_sums.append(
                np.bincount(cell, weights=cum_costs[k].ravel(), minlength=n_sets * n_keys).reshape(
                    n_sets, n_keys
                )
            )
    return hit_sums, counts, cost_sums


@dataclass
class SolvedTables:
    """Algorithm 1's result per level, batched (R, K_k); ``positions`` index the level's strategies."""

    positions: list[np.ndarray]
    now_values: list[np.ndarray]
    deeper_values: list[np.ndarray]  # levels 1..L-1 only
    values: list[np.ndarray]


def solve_levels(
    hit_sums: Sequence[np.ndarray],
    counts: Sequence[np.ndarray],
    cost_sums: Sequence[np.ndarray],
    n_bins: np.ndarray,
    lam: float,
) -> SolvedTables:
    """Paper's Algorithm 1 (bottom-up policy training) on per-key sums, vectorized over keys and batches."""
    n_levels = len(hit_sums)
    positions: list[np.ndarray] = [np.empty(0)] * n_levels
    now_values: list[np.ndarray] = [np.empty(0)] * n_levels
    values: list[np.ndarray] = [np.empty(0)] * n_levels
    deeper_values: list[np.ndarray] = [np.empty(0)] * (n_levels - 1)
    for k in reversed(range(n_levels)):
        sums = hit_sums[k]
        n_sets, n_strategies, n_keys = sums.shape
        # Choose by hits (exact integers), not by reward: the cost term is the same for every strategy of a key.
        best = sums.argmax(axis=1)
        now = np.take_along_axis(sums, best[:, None, :], axis=1)[:, 0, :]
        if lam:
            now = now - lam * cost_sums[k]
        if k == n_levels - 1:
            position, value = best, now
        else:
            deeper = values[k + 1].reshape(n_sets, n_keys, int(n_bins[k + 1])).sum(axis=2)
            go = deeper > now
            position = np.where(go, GO_DEEPER, best)
            value = np.where(go, deeper, now)
            deeper_values[k] = deeper
        unseen = counts[k] == 0
        if unseen.any():
            per_parent = sums.reshape(n_sets, n_strategies, n_keys // int(n_bins[k]), int(n_bins[k])).sum(
                axis=3
            )
            fallback = np.repeat(per_parent.argmax(axis=1), int(n_bins[k]), axis=1)
            position = np.where(unseen, fallback, position)
        positions[k], now_values[k], values[k] = position, now, value
    return SolvedTables(positions, now_values, deeper_values, values)


def route(positions: Sequence[np.ndarray], keys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 2 on precomputed keys, batched: keys[k] (R, m) -> (depth index, strategy position), each (R, m).

    An item decides at the first level whose action is not GO_DEEPER (the deepest level always decides)."""
    decided_level = np.full(keys[0].shape, len(keys) - 1, dtype=np.int64)
    decided_position = np.full(keys[0].shape, GO_DEEPER, dtype=np.int64)
    pending = np.ones(keys[0].shape, dtype=bool)
    for k, table in enumerate(positions):
        action = np.take_along_axis(table, keys[k], axis=1)
        stop = pending & (action != GO_DEEPER)
        decided_level[stop] = k
        decided_position[stop] = action[stop]
        pending &= ~stop
    return decided_level, decided_position


# --------------------------------------------------------------------------------------------------------------
# The policy


@dataclass
class CascadeResult:
    """What staged inference did, per item.

    Attributes:
        predictions: the final answer (n,).
        depth: how many LLMs were asked (n,), 1..L.
        answers: each asked LLM's answer (L, n), -1 where not asked.
        scores: each asked LLM's score (L, n), NaN where not asked.
        keys: the integer key at each level (L, n), -1 where not reached.
        actions: the action at each level (L, n): a strategy id, GO_DEEPER, or NOT_REACHED.
        calls: how many items each LLM was asked about (L,).
    """

    predictions: np.ndarray
    depth: np.ndarray
    answers: np.ndarray
    scores: np.ndarray
    keys: np.ndarray
    actions: np.ndarray
    calls: np.ndarray

    def item_costs(self, costs: np.ndarray) -> np.ndarray:
        """Cost spent per item: the sum of the costs (L,) or (L, n) of the LLMs that were asked about it."""
        n_llms, n_items = self.answers.shape
        full = item_costs(costs, n_llms, n_items)
        asked = np.arange(n_llms)[:, None] < self.depth[None, :]
        return np.where(asked, full, 0.0).sum(axis=0)


@dataclass
class CascadePolicy:
    """A trained cascade: bin edges, per-level action tables and the training counts behind every decision.

    Level k (index k-1) has K_k = prod(n_bins[:k]) keys. ``actions[k][key]`` is a strategy id (a position in
    ``strategies``) or GO_DEEPER. ``hits[k]`` (K_k, S_k) holds the training hits of the level's strategies
    (``level_strategies[k]``) per key, ``counts[k]`` the number of training items per key, ``costs[k]`` their
    summed cost of the first k LLMs, ``now_values[k]`` the best answer-now value and ``deeper_values[k]`` (levels
    1..L-1) the value of going deeper.
    """

    edges: list[np.ndarray]
    strategies: tuple[str, ...]
    level_strategies: list[np.ndarray]
    actions: list[np.ndarray]
    counts: list[np.ndarray]
    hits: list[np.ndarray]
    costs: list[np.ndarray]
    now_values: list[np.ndarray]
    deeper_values: list[np.ndarray]
    n_classes: int
    lam: float = 0.0
    llms: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    calibrators: list[dict[str, Any] | None] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_llms(self) -> int:
        return len(self.edges)

    @property
    def n_bins(self) -> np.ndarray:
        return n_bins_of(self.edges)

    def strategy_objects(self) -> list[Strategy]:
        return [get_strategy(name) for name in self.strategies]

    def training_totals(self) -> tuple[float, float, int]:
        """Training hits, cost and items of the policy, read from its tables (what Algorithm 1 optimized)."""
        total_hits = total_cost = 0.0
        reached: np.ndarray = np.ones(len(self.actions[0]), dtype=bool)
        for k, actions in enumerate(self.actions):
            answer_now = reached & (actions != GO_DEEPER)
            keys = np.flatnonzero(answer_now)
            if keys.size:
                columns = np.searchsorted(self.level_strategies[k], actions[keys])
                total_hits += float(self.hits[k][keys, columns].sum())
                total_cost += float(self.costs[k][keys].sum())
            if k + 1 < self.n_llms:
                reached = np.repeat(reached & (actions == GO_DEEPER), int(self.n_bins[k + 1]))
        return total_hits, total_cost, int(self.counts[0].sum())

    # ---- inference (Algorithm 2)

    def predict_staged(self, score_llm: ScoreFunction, n_items: int) -> CascadeResult:
        """Paper's Algorithm 2, staged over a batch: LLM k is asked only about the items whose key says go deeper.

        ``score_llm(k, indices)`` returns the answers (class indices) and scores (in [0, 1]) of LLM k for the
        items ``indices`` (positions in 0..n_items-1); it is called at most once per LLM, never with no items.
        """
        if n_items < 0:
            raise ValueError(f"n_items must be >= 0, got {n_items}")
        n_llms, n_bins = self.n_llms, self.n_bins
        strategies = self.strategy_objects()
        answers = np.full((n_llms, n_items), -1, dtype=np.int64)
        scores = np.full((n_llms, n_items), np.nan)
        keys = np.full((n_llms, n_items), -1, dtype=np.int64)
        actions = np.full((n_llms, n_items), NOT_REACHED, dtype=np.int64)
        predictions = np.full(n_items, -1, dtype=np.int64)
        depth = np.zeros(n_items, dtype=np.int64)
        calls = np.zeros(n_llms, dtype=np.int64)
        active = np.arange(n_items)
        active_keys = np.zeros(n_items, dtype=np.int64)
        for k in range(n_llms):
            if active.size == 0:
                break
            got_answers, got_scores = score_llm(k, active.copy())
            got_answers, got_scores = self._check_llm_output(k, got_answers, got_scores, active.size)
            answers[k, active], scores[k, active] = got_answers, got_scores
            calls[k] = active.size
            depth[active] = k + 1
            active_keys = active_keys * int(n_bins[k]) + digitize(got_scores, self.edges[k])
            keys[k, active] = active_keys
            action = self.actions[k][active_keys]
            actions[k, active] = action
            stop = action != GO_DEEPER
            for strategy_id in np.unique(action[stop]):
                chosen = active[stop & (action == strategy_id)]
                predictions[chosen] = strategies[strategy_id](
                    answers[: k + 1, chosen], scores[: k + 1, chosen], self.n_classes
                )
            active, active_keys = active[~stop], active_keys[~stop]
        return CascadeResult(predictions, depth, answers, scores, keys, actions, calls)

    def predict(self, answers: np.ndarray, scores: np.ndarray) -> CascadeResult:
        """Algorithm 2 when every LLM's answers and scores (L, n) are already known (evaluation)."""
        answers, scores = check_answers_scores(answers, scores)
        if answers.shape[0] != self.n_llms:
            raise ValueError(f"the policy has {self.n_llms} LLMs, got answers of {answers.shape[0]}")
        return self.predict_staged(lambda k, idx: (answers[k, idx], scores[k, idx]), answers.shape[1])

    def _check_llm_output(
        self, k: int, answers: np.ndarray, scores: np.ndarray, n_asked: int
    ) -> tuple[np.ndarray, np.ndarray]:
        answers, scores = np.asarray(answers), np.asarray(scores, dtype=np.float64)
        if answers.shape != (n_asked,) or scores.shape != (n_asked,):
            raise ValueError(
                f"LLM {k} was asked about {n_asked} items but returned answers {answers.shape}, "
                f"scores {scores.shape}"
            )
        checked_answers, checked_scores = check_answers_scores(answers[None], scores[None])
        if checked_answers.max() >= self.n_classes:
            raise ValueError(
                f"LLM {k} answered class {checked_answers.max()}, outside n_classes={self.n_classes}"
            )
        return checked_answers[0], checked_scores[0]

    # ---- explanations

    def explain(self, result: CascadeResult, item: int) -> list[dict[str, Any]]:
        """Why item ``item`` of ``result`` got its answer: per level reached, its key and the decision behind it."""
        if not 0 <= item < result.predictions.shape[0]:
            raise IndexError(f"item {item} is outside 0..{result.predictions.shape[0] - 1}")
        steps = []
        for k in range(int(result.depth[item])):
            key = int(result.keys[k, item])
            action = int(result.actions[k, item])
            level_names = [self.strategies[i] for i in self.level_strategies[k]]
            count = int(self.counts[k][key])
            step: dict[str, Any] = {
                "level": k + 1,
                "llm": self.llms[k] if self.llms else k,
                "answer": self._class_name(int(result.answers[k, item])),
                "score": float(result.scores[k, item]),
                "bins": list(decode_key(key, self.n_bins[: k + 1].tolist())),
                "key": key,
                "decision": "go deeper" if action == GO_DEEPER else self.strategies[action],
                "unseen_key": count == 0,
                "train_items": count,
                "train_hits": {
                    name: float(h) for name, h in zip(level_names, self.hits[k][key], strict=True)
                },
                "answer_now_value": float(self.now_values[k][key]),
            }
            if k < self.n_llms - 1:
                step["go_deeper_value"] = float(self.deeper_values[k][key])
            if action != GO_DEEPER:
                step["final_answer"] = self._class_name(int(result.predictions[item]))
            steps.append(step)
        return steps

    def _class_name(self, index: int) -> str | int:
        return self.classes[index] if self.classes else index

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with everything needed to rebuild the policy and explain its decisions."""
        return {
            "format": "lwc-cascade-policy",
            "version": FORMAT_VERSION,
            "edges": [e.tolist() for e in self.edges],
            "strategies": list(self.strategies),
            "level_strategies": [s.tolist() for s in self.level_strategies],
            "actions": [a.tolist() for a in self.actions],
            "counts": [c.tolist() for c in self.counts],
            "hits": [h.tolist() for h in self.hits],
            "costs": [c.tolist() for c in self.costs],
            "now_values": [v.tolist() for v in self.now_values],
            "deeper_values": [v.tolist() for v in self.deeper_values],
            "n_classes": self.n_classes,
            "lam": self.lam,
            "llms": list(self.llms),
            "classes": list(self.classes),
            "calibrators": list(self.calibrators),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CascadePolicy:
        if d.get("format") != "lwc-cascade-policy":
            raise ValueError(f"not a cascade policy (format {d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported cascade policy version {d.get('version')!r}; expected {FORMAT_VERSION}"
            )
        strategies = tuple(d["strategies"])
        for name in strategies:
            get_strategy(name)  # fail early, naming the strategy, if it is not registered here
        n_levels = len(d["edges"])
        policy = cls(
            edges=check_edges(d["edges"]),
            strategies=strategies,
            level_strategies=[np.asarray(s, dtype=np.int64) for s in d["level_strategies"]],
            actions=[np.asarray(a, dtype=np.int64) for a in d["actions"]],
            counts=[np.asarray(c, dtype=np.int64) for c in d["counts"]],
            hits=[
                np.asarray(h, dtype=np.float64).reshape(len(d["counts"][k]), -1)
                for k, h in enumerate(d["hits"])
            ],
            costs=[np.asarray(c, dtype=np.float64) for c in d["costs"]],
            now_values=[np.asarray(v, dtype=np.float64) for v in d["now_values"]],
            deeper_values=[np.asarray(v, dtype=np.float64) for v in d["deeper_values"]],
            n_classes=int(d["n_classes"]),
            lam=float(d["lam"]),
            llms=tuple(d.get("llms", ())),
            classes=tuple(d.get("classes", ())),
            calibrators=list(d.get("calibrators", [])),
            metadata=dict(d.get("metadata", {})),
        )
        sizes = level_sizes(policy.n_bins)
        for name, arrays in (("actions", policy.actions), ("counts", policy.counts), ("costs", policy.costs)):
            if len(arrays) != n_levels or any(
                a.shape != (int(s),) for a, s in zip(arrays, sizes, strict=False)
            ):
                raise ValueError(
                    f"cascade policy: {name!r} does not match the bin edges ({sizes.tolist()} keys)"
                )
        return policy

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> CascadePolicy:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------------------------------
# Training


def train_policy(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    edges: Sequence[np.ndarray | Sequence[float]],
    *,
    costs: np.ndarray | None = None,
    lam: float = 0.0,
    strategies: Sequence[Strategy | str] | None = None,
    n_classes: int | None = None,
    llms: Sequence[str] = (),
    classes: Sequence[str] = (),
    calibrators: Sequence[dict[str, Any] | None] = (),
    metadata: dict[str, Any] | None = None,
) -> CascadePolicy:
    """Paper's Algorithm 1: train a cascade policy on labeled items, with reward hits - lam * cost.

    Args:
        answers: each LLM's answer (L, n), LLMs cheapest first.
        scores: each LLM's (calibrated) confidence in its answer (L, n), in [0, 1].
        labels: the true classes (n,).
        edges: per LLM, its sorted interior bin edges.
        costs: cost of asking each LLM: (L,) per call or (L, n) per item; None = free (only for lam = 0).
        lam: cost weight (hits per unit of cost); 0 is the paper's algorithm.
        strategies: answer strategies (objects or names); None = the default library.
    """
    answers, scores = check_answers_scores(answers, scores)
    n_llms, n_items = answers.shape
    n_classes = infer_n_classes(answers, np.asarray(labels), n_classes)
    labels = check_labels(labels, n_items, n_classes)
    checked_edges = check_edges(edges, n_llms)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    if lam and costs is None:
        raise ValueError("a cost-aware policy (lam > 0) needs costs")
    resolved = resolve_strategies(strategies, n_llms)
    n_bins = n_bins_of(checked_edges)
    bins = np.stack([digitize(scores[j], checked_edges[j]) for j in range(n_llms)])
    keys = encode_keys(bins, n_bins)
    predictions = level_predictions(answers, scores, resolved, n_classes)
    hits = [(p == labels)[None] for p in predictions]
    cum_costs = (
        None if costs is None else [c[None] for c in cumulative_costs(item_costs(costs, n_llms, n_items))]
    )
    hit_sums, counts, cost_sums = aggregate_levels(
        [keys[k][None] for k in range(n_llms)], hits, cum_costs, level_sizes(n_bins)
    )
    solved = solve_levels(hit_sums, counts, cost_sums, n_bins, lam)
    level_ids = level_strategy_ids(resolved, n_llms)
    actions = [
        np.where(pos[0] == GO_DEEPER, GO_DEEPER, ids[np.maximum(pos[0], 0)])
        for pos, ids in zip(solved.positions, level_ids, strict=True)
    ]
    policy = CascadePolicy(
        edges=checked_edges,
        strategies=tuple(s.name for s in resolved),
        level_strategies=level_ids,
        actions=actions,
        counts=[c[0] for c in counts],
        hits=[h[0].T.copy() for h in hit_sums],
        costs=[c[0] for c in cost_sums],
        now_values=[v[0] for v in solved.now_values],
        deeper_values=[v[0] for v in solved.deeper_values],
        n_classes=n_classes,
        lam=float(lam),
        llms=tuple(llms),
        classes=tuple(classes),
        calibrators=list(calibrators),
        metadata=dict(metadata or {}),
    )
    train_hits, train_cost, _ = policy.training_totals()
    policy.metadata.setdefault("n_train", n_items)
    policy.metadata.setdefault("train_accuracy", train_hits / n_items)
    policy.metadata.setdefault("train_cost_per_item", train_cost / n_items)
    return policy
