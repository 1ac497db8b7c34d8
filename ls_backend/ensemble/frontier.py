"""The accuracy/cost frontier of cost-aware policies, and the budget mode (beyond the paper).

Training with reward ``hits - lam * cost`` (see :func:`ls_backend.ensemble.policy.train_policy`) maximizes a
Lagrangian: as ``lam`` grows from 0 the policy moves from the most accurate cascade to the cheapest one (every item
answered by the cheapest LLM). The best value ``V(lam) = max_policy hits - lam * cost`` is convex and piecewise
linear in ``lam``; each linear piece is one policy, a vertex of the upper-left convex hull of the (cost, hits)
points of all policies. :func:`cost_frontier` finds all of them exactly by the Eisner-Severance bisection: for two
frontier policies a and b it trains at the ``lam`` where their lines cross, and recurses only when the policy
found there is strictly better than both at that ``lam``.

Budget mode (:func:`train_within_budget`) returns the most accurate frontier policy whose expected training
cost per item stays under the budget. Policies between two hull vertices (off the convex hull) are not
considered: it is the exact optimum of the Lagrangian relaxation, not of the knapsack-like constrained problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ls_backend.ensemble._checks import item_costs
from ls_backend.ensemble.policy import CascadePolicy, train_policy
from ls_backend.ensemble.strategies import Strategy


@dataclass
class FrontierPoint:
    """One policy of the frontier: the ``lam`` it was trained with and its training hits and cost per item."""

    lam: float
    accuracy: float
    cost_per_item: float
    policy: CascadePolicy

    def to_dict(self) -> dict[str, float]:
        return {"lam": self.lam, "accuracy": self.accuracy, "cost_per_item": self.cost_per_item}


def cost_frontier(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    edges: Sequence[np.ndarray | Sequence[float]],
    costs: np.ndarray,
    *,
    strategies: Sequence[Strategy | str] | None = None,
    n_classes: int | None = None,
    max_points: int = 200,
    **policy_kwargs: Any,
) -> list[FrontierPoint]:
    """All policies on the (training) accuracy/cost frontier, cheapest first, each with a ``lam`` that yields it."""
    if costs is None:
        raise ValueError("the cost frontier needs costs")
    answers = np.asarray(answers)
    full_costs = item_costs(costs, answers.shape[0], answers.shape[1] if answers.ndim == 2 else 0)
    n_items = answers.shape[1]

    def train(lam: float) -> FrontierPoint:
        policy = train_policy(
            answers, scores, labels, edges, costs=full_costs, lam=lam, strategies=strategies,
            n_classes=n_classes, **policy_kwargs,
        )  # fmt: skip
        hits, cost, _ = policy.training_totals()
        return FrontierPoint(float(lam), hits / n_items, cost / n_items, policy)

    most_accurate = train(0.0)
    cheapest_cost = float(full_costs[0].mean())
    # Large enough that no extra call is worth its cost: double until the policy is the cheapest possible.
    extra = full_costs[1:][full_costs[1:] > 0]
    lam_high = 1.0 / float(extra.min()) if extra.size else 1.0
    cheapest = train(lam_high)
    for _ in range(80):
        if cheapest.cost_per_item <= cheapest_cost * (1 + 1e-12) + 1e-300:
            break
        lam_high *= 2.0
        cheapest = train(lam_high)

    points = {most_accurate.lam: most_accurate, cheapest.lam: cheapest}

    def refine(a: FrontierPoint, b: FrontierPoint) -> None:
        # a: more accurate and costlier; b: cheaper. Their lines hits - lam * cost cross at lam_cross.
        if len(points) >= max_points or b.cost_per_item >= a.cost_per_item or a.accuracy <= b.accuracy:
            return
        lam_cross = (a.accuracy - b.accuracy) / (a.cost_per_item - b.cost_per_item)
        mid = train(lam_cross)
        line = a.accuracy - lam_cross * a.cost_per_item
        value = mid.accuracy - lam_cross * mid.cost_per_item
        if value > line + 1e-12 * max(1.0, abs(line)):
            points[mid.lam] = mid
            refine(a, mid)
            refine(mid, b)

    refine(most_accurate, cheapest)
    frontier = sorted(points.values(), key=lambda p: (p.cost_per_item, p.accuracy))
    # Keep only points that buy accuracy with cost (drop dominated duplicates at equal cost).
    kept: list[FrontierPoint] = []
    for point in frontier:
        while kept and kept[-1].cost_per_item == point.cost_per_item and kept[-1].accuracy <= point.accuracy:
            kept.pop()
        if not kept or point.accuracy > kept[-1].accuracy:
            kept.append(point)
    return kept


def train_within_budget(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    edges: Sequence[np.ndarray | Sequence[float]],
    costs: np.ndarray,
    budget: float,
    **kwargs: Any,
) -> CascadePolicy:
    """Budget mode: the most accurate frontier policy whose training cost per item is at most ``budget``."""
    if not np.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite number >= 0, got {budget}")
    frontier = cost_frontier(answers, scores, labels, edges, costs, **kwargs)
    affordable = [p for p in frontier if p.cost_per_item <= budget]
    if not affordable:
        raise ValueError(
            f"no policy costs at most {budget} per item; the cheapest costs {frontier[0].cost_per_item:.6g}"
        )
    best = max(affordable, key=lambda p: (p.accuracy, -p.cost_per_item))
    best.policy.metadata["budget"] = float(budget)
    return best.policy
