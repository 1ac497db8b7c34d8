"""The measuring part of the reduced precisions' quality guard (``scripts/precision_guard.py``): how far an LLM's
scores in another precision are from its fp32 scores on one task's items, and the verdict over tasks.

Per task: answer agreement with fp32, the largest and the mean absolute class-logit difference, the change of the
task's ranking quality (:func:`ls_backend.benchmark.prompt_study.task_quality`), the change of the uncalibrated ACE
(all items, 10 equal-mass bins) and of the calibrated ACE: temperature scaling (ST) fitted on one half of the
task's items and ACE (5 equal-mass bins) on the other, both ways round, halves fixed by a seeded label-stratified
split shared by all precisions. A precision passes when the agreement over all items is at least
``min_agreement`` and the mean over tasks of the AUC change is within ``max_auc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ls_backend.benchmark.prompt_study import task_quality

MIN_AGREEMENT = 0.995
MAX_AUC_CHANGE = 0.005


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets, each with about half of every class (a seeded stratified split)."""
    rng = np.random.default_rng(seed)
    first: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        first.extend(members[: len(members) // 2].tolist())
    a = np.array(sorted(first), dtype=np.int64)
    b = np.setdiff1d(np.arange(len(labels)), a)
    return a, b


def calibrated_ace(logits: np.ndarray, answers: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ST fitted on one half, ACE (5 equal-mass bins) of the LLM's answers on the other; mean of both ways."""
    from ls_backend.calibration import make_calibrator
    from ls_backend.confidence import confidence_scores
    from ls_backend.metrics import ace

    a, b = halves(labels, seed)
    values = []
    for fit, evaluate in ((a, b), (b, a)):
        calibrator = make_calibrator("ST").fit(logits[fit], labels[fit])
        scores = confidence_scores(logits[evaluate], answers[evaluate], calibrator)
        values.append(ace(scores, answers[evaluate] == labels[evaluate], n_bins=5))
    return float(np.mean(values))


def compare(
    reference: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    classes: Sequence[str],
    seed: int = 0,
) -> dict[str, float]:
    """How far ``other`` (answers, logits) is from the fp32 ``reference`` on one task's items (module docstring)."""
    from ls_backend.confidence import confidence_scores
    from ls_backend.metrics import ace

    (ref_answers, ref_logits), (answers, logits) = reference, other
    difference = np.abs(logits - ref_logits)
    quality = task_quality(logits, labels, classes)
    ref_quality = task_quality(ref_logits, labels, classes)
    plain_ace = ace(confidence_scores(logits, answers), answers == labels)
    ref_plain_ace = ace(confidence_scores(ref_logits, ref_answers), ref_answers == labels)
    cal_ace = calibrated_ace(logits, answers, labels, seed)
    ref_cal_ace = calibrated_ace(ref_logits, ref_answers, labels, seed)
    return {
        "n_items": int(labels.size),
        "agreement": float((answers == ref_answers).mean()),
        "max_abs_logit_diff": float(difference.max()),
        "mean_abs_logit_diff": float(difference.mean()),
        "auc_fp32": ref_quality,
        "auc_change": quality - ref_quality,
        "ace_fp32": ref_plain_ace,
        "ace_change": plain_ace - ref_plain_ace,
        "calibrated_ace_fp32": ref_cal_ace,
        "calibrated_ace_change": cal_ace - ref_cal_ace,
    }


def summarize(
    per_task: Mapping[str, Mapping[str, float]], min_agreement: float, max_auc: float
) -> dict[str, Any]:
    """Means over tasks (agreement over all items), the worst task, and the verdict."""
    rows = list(per_task.values())
    n = np.array([r["n_items"] for r in rows], dtype=np.float64)
    agreement = float(np.sum([r["agreement"] * k for r, k in zip(rows, n, strict=True)]) / n.sum())
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "n_items"}
    summary: dict[str, Any] = {
        "agreement": agreement,
        "min_task_agreement": float(min(r["agreement"] for r in rows)),
        "max_abs_logit_diff": float(max(r["max_abs_logit_diff"] for r in rows)),
        "mean_abs_logit_diff": mean["mean_abs_logit_diff"],
        "auc_change": mean["auc_change"],
        "max_task_abs_auc_change": float(max(abs(r["auc_change"]) for r in rows)),
        "ace_change": mean["ace_change"],
        "calibrated_ace_change": mean["calibrated_ace_change"],
        "seconds_per_item": float(np.mean([r["seconds_per_item"] for r in rows if "seconds_per_item" in r]))
        if any("seconds_per_item" in r for r in rows)
        else float("nan"),
    }
    summary["passes"] = bool(agreement >= min_agreement and abs(summary["auc_change"]) <= max_auc)
    return summary
