"""The paper's Table 3 comparison for one task: each LLM alone, majority vote, weighted majority vote
(uncalibrated and calibrated) and the cascade (uncalibrated and calibrated), by precision, recall, F1 and cost.

Protocol per evaluation split (a random train/test split of the labeled items, ``n_eval_splits`` of them):
calibrators (one per LLM) are fitted on the train part's logits and labels; the cascade's bin edges are tuned on
the train part (:func:`ls_backend.ensemble.tuning.tune_bin_edges`, itself using inner splits of the train part),
the policy is trained on the whole train part and evaluated on the test part. Numbers are means over the
evaluation splits. Costs are per test item; relative costs divide by the reference LLM's cost per item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ls_backend.ensemble._checks import check_answers_scores, check_labels, item_costs
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.ensemble.frontier import cost_frontier, train_within_budget
from ls_backend.ensemble.policy import CascadePolicy, train_policy
from ls_backend.ensemble.strategies import majority_vote, weighted_majority_vote
from ls_backend.ensemble.tuning import random_splits, tune_bin_edges

METRICS = ("accuracy", "precision", "recall", "f1", "cost_per_item", "relative_cost")


def _answer_scores(logits: np.ndarray, answers: np.ndarray, calibrators: Sequence[Any] | None) -> np.ndarray:
    from ls_backend.confidence import confidence_scores

    return np.stack(
        [
            np.clip(
                confidence_scores(logits[j], answers[j], None if calibrators is None else calibrators[j]),
                0,
                1,
            )
            for j in range(logits.shape[0])
        ]
    )


def cascade_table(
    logits: np.ndarray,
    answers: np.ndarray,
    costs: np.ndarray,
    labels: np.ndarray,
    *,
    llms: Sequence[str],
    calibrator: str = "ST",
    n_bins: int = 10,
    n_trials: int = 100,
    n_splits: int = 5,
    n_eval_splits: int = 3,
    test_size: float = 0.2,
    seed: int = 0,
    lam: float = 0.0,
    budget: float | None = None,
    positive_class: int | None = None,
    reference_llm: int = 0,
    frontier: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Table 3 rows for one task's labeled items (logits (L, n, C), answers/costs (L, n), labels (n,))."""
    from ls_backend.calibration import make_calibrator

    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (n_llms, n_items, n_classes), got {logits.shape}")
    n_llms, n_items, n_classes = logits.shape
    if np.shape(answers) != (n_llms, n_items):
        raise ValueError(f"answers must have shape {(n_llms, n_items)}, got {np.shape(answers)}")
    answers = check_answers_scores(answers, np.zeros((n_llms, n_items)))[0]
    labels = check_labels(labels, n_items, n_classes)
    costs = item_costs(costs, n_llms, n_items)
    if len(llms) != n_llms:
        raise ValueError(f"got {len(llms)} LLM names for {n_llms} LLMs")
    if not 0 <= reference_llm < n_llms:
        raise ValueError(f"reference_llm must be in [0, {n_llms}), got {reference_llm}")
    make_calibrator(calibrator)  # unknown names fail before any work
    cal_label = f"calibrated {calibrator}"
    methods = [*llms, "majority vote", "weighted majority (uncalibrated)", f"weighted majority ({cal_label})",
               "cascade (uncalibrated)", f"cascade ({cal_label})"]  # fmt: skip
    sums: dict[str, dict[str, float]] = {m: dict.fromkeys(METRICS, 0.0) for m in methods}
    depth_sums = {m: np.zeros(n_llms) for m in methods[-2:]}
    frontier_rows: list[dict[str, float]] = []
    policies: dict[str, CascadePolicy] = {}
    uncalibrated = _answer_scores(logits, answers, None)
    train_sets, test_sets = random_splits(n_items, n_eval_splits, test_size, seed)

    for split, (train, test) in enumerate(zip(train_sets, test_sets, strict=True)):
        calibrators = [
            make_calibrator(calibrator).fit(logits[j, train], labels[train]) for j in range(n_llms)
        ]
        calibrated = _answer_scores(logits, answers, calibrators)
        test_costs = costs[:, test]
        reference_cost = float(test_costs[reference_llm].mean())

        def add(method: str, predictions: np.ndarray, cost: float) -> None:
            scores = precision_recall_f1(labels[test], predictions, n_classes, positive_class)  # noqa: B023
            for name in ("precision", "recall", "f1"):
                sums[method][name] += float(scores[name])
            sums[method]["accuracy"] += float(np.mean(predictions == labels[test]))  # noqa: B023
            sums[method]["cost_per_item"] += cost
            sums[method]["relative_cost"] += cost / reference_cost if reference_cost > 0 else float("nan")  # noqa: B023

        for j, llm in enumerate(llms):
            add(llm, answers[j, test], float(test_costs[j].mean()))
        all_cost = float(test_costs.sum(axis=0).mean())
        add(methods[n_llms], majority_vote(answers[:, test], uncalibrated[:, test], n_classes), all_cost)
        for method, scores in ((methods[n_llms + 1], uncalibrated), (methods[n_llms + 2], calibrated)):
            add(method, weighted_majority_vote(answers[:, test], scores[:, test], n_classes), all_cost)
        for method, scores, cals in (
            (methods[-2], uncalibrated, None),
            (methods[-1], calibrated, calibrators),
        ):
            tuned = tune_bin_edges(
                answers[:, train], scores[:, train], labels[train], costs=costs[:, train], n_bins=n_bins,
                n_trials=n_trials, n_splits=n_splits, seed=seed + split, lam=lam, positive_class=positive_class,
                n_classes=n_classes,
            )  # fmt: skip
            common: dict[str, Any] = {
                "n_classes": n_classes, "llms": llms,
                "calibrators": [c.to_dict() for c in cals] if cals is not None else [None] * n_llms,
                "metadata": {"tuned_f1": tuned.best_value, "n_trials": n_trials, "n_splits": n_splits, "seed": seed},
            }  # fmt: skip
            if budget is None:
                policy = train_policy(
                    answers[:, train], scores[:, train], labels[train], tuned.edges, costs=costs[:, train],
                    lam=lam, **common,
                )  # fmt: skip
            else:
                policy = train_within_budget(
                    answers[:, train],
                    scores[:, train],
                    labels[train],
                    tuned.edges,
                    costs[:, train],
                    budget,
                    **common,
                )
            result = policy.predict(answers[:, test], scores[:, test])
            add(method, result.predictions, float(result.item_costs(test_costs).mean()))
            depth_sums[method] += np.bincount(result.depth - 1, minlength=n_llms) / test.size
            policies[method] = policy
            if frontier and split == 0 and cals is not None:
                for point in cost_frontier(
                    answers[:, train], scores[:, train], labels[train], tuned.edges, costs[:, train],
                    n_classes=n_classes,
                ):  # fmt: skip
                    point_result = point.policy.predict(answers[:, test], scores[:, test])
                    point_cost = float(point_result.item_costs(test_costs).mean())
                    frontier_rows.append(
                        {
                            **point.to_dict(),
                            "test_f1": float(
                                precision_recall_f1(
                                    labels[test], point_result.predictions, n_classes, positive_class
                                )["f1"]
                            ),
                            "test_cost_per_item": point_cost,
                            "test_relative_cost": point_cost / reference_cost
                            if reference_cost > 0
                            else float("nan"),
                        }
                    )
            if on_step is not None:
                on_step(method)

    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        row.update({name: value / n_eval_splits for name, value in sums[method].items()})
        if method in depth_sums:
            row["depth_fractions"] = (depth_sums[method] / n_eval_splits).tolist()
        rows.append(row)
    return {
        "n_items": n_items,
        "n_classes": n_classes,
        "llms": list(llms),
        "reference_llm": llms[reference_llm],
        "rows": rows,
        "frontier": frontier_rows,
        "policy": policies[methods[-1]].to_dict(),
    }


def average_tables(tables: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows averaged over tasks, matched by method name (the tasks must share their LLMs)."""
    if not tables:
        raise ValueError("no task tables to average")
    methods = [row["method"] for row in tables[0]["rows"]]
    averaged = []
    for index, method in enumerate(methods):
        rows = [table["rows"][index] for table in tables]
        if any(row["method"] != method for row in rows):
            raise ValueError(f"tasks disagree on the methods compared (row {index}: {method!r})")
        averaged.append(
            {"method": method, **{name: float(np.mean([row[name] for row in rows])) for name in METRICS}}
        )
    return averaged
