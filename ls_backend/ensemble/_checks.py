"""Input validation shared by the ensemble modules."""

from __future__ import annotations

import numpy as np


def check_answers_scores(answers: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``answers`` (L, n) class indices >= 0 and ``scores`` (L, n) finite in [0, 1], as int64 and float64."""
    answers = np.asarray(answers)
    scores = np.asarray(scores, dtype=np.float64)
    if answers.ndim != 2:
        raise ValueError(f"answers must have shape (n_llms, n_items), got {answers.shape}")
    if scores.shape != answers.shape:
        raise ValueError(f"scores shape {scores.shape} does not match answers shape {answers.shape}")
    if answers.shape[0] < 1 or answers.shape[1] < 1:
        raise ValueError(f"need at least one LLM and one item, got answers of shape {answers.shape}")
    if not np.issubdtype(answers.dtype, np.integer):
        raise TypeError(f"answers must be integer class indices, got dtype {answers.dtype}")
    if answers.min() < 0:
        raise ValueError("answers must be class indices >= 0 (every LLM must have answered every item)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    if scores.min() < 0 or scores.max() > 1:
        raise ValueError(f"scores must lie in [0, 1], got range [{scores.min()}, {scores.max()}]")
    return answers.astype(np.int64, copy=False), scores


def check_labels(labels: np.ndarray, n_items: int, n_classes: int) -> np.ndarray:
    """True labels (n,) in [0, n_classes)."""
    labels = np.asarray(labels)
    if labels.shape != (n_items,):
        raise ValueError(f"labels must have shape ({n_items},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError("labels must be class indices >= 0; leave unlabeled items (-1) out before training")
    if labels.max() >= n_classes:
        raise ValueError(f"labels must be < n_classes={n_classes}, got {labels.max()}")
    return labels.astype(np.int64, copy=False)


def infer_n_classes(answers: np.ndarray, labels: np.ndarray | None, n_classes: int | None) -> int:
    """The number of classes: given, or one more than the largest class index seen."""
    seen = int(answers.max()) + 1
    if labels is not None and labels.size:
        seen = max(seen, int(np.max(labels)) + 1)
    if n_classes is None:
        return max(seen, 2)
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if seen > n_classes:
        raise ValueError(f"class index {seen - 1} is outside n_classes={n_classes}")
    return int(n_classes)


def item_costs(costs: np.ndarray | None, n_llms: int, n_items: int) -> np.ndarray:
    """Costs as (L, n): None means zero, (L,) means a fixed cost per call of each LLM."""
    if costs is None:
        return np.zeros((n_llms, n_items))
    costs = np.asarray(costs, dtype=np.float64)
    if costs.shape == (n_llms,):
        costs = np.broadcast_to(costs[:, None], (n_llms, n_items))
    if costs.shape != (n_llms, n_items):
        raise ValueError(f"costs must have shape ({n_llms},) or ({n_llms}, {n_items}), got {costs.shape}")
    if not np.isfinite(costs).all() or costs.min() < 0:
        raise ValueError("costs must be finite and >= 0")
    return costs
