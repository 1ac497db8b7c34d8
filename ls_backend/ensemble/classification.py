"""Classification metrics of the Table 3 comparison: precision, recall and F1, batched over splits."""

from __future__ import annotations

import numpy as np


def confusion_matrices(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts ``[..., true, predicted]`` over the last axis of ``labels`` and ``predictions``."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels shape {labels.shape} does not match predictions shape {predictions.shape}")
    if labels.ndim < 1 or labels.shape[-1] == 0:
        raise ValueError("need at least one item")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.min() < 0 or values.max() >= n_classes:
            raise ValueError(f"{name} must be class indices in [0, {n_classes})")
    batch = labels.shape[:-1]
    n_batch = int(np.prod(batch, dtype=np.int64))
    cell = (np.arange(n_batch).reshape((*batch, 1)) * n_classes + labels) * n_classes + predictions
    counts = np.bincount(cell.ravel(), minlength=n_batch * n_classes * n_classes)
    return counts.reshape((*batch, n_classes, n_classes))


def precision_recall_f1(
    labels: np.ndarray, predictions: np.ndarray, n_classes: int, positive_class: int | None = None
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 over the last axis (leading axes are a batch, e.g. splits).

    With ``positive_class``: the binary scores of that class. Without: macro averages over the classes that occur
    in the labels or the predictions (as scikit-learn does). A ratio with a zero denominator counts as 0.
    """
    if positive_class is not None and not 0 <= positive_class < n_classes:
        raise ValueError(f"positive_class must be in [0, {n_classes}), got {positive_class}")
    cm = confusion_matrices(labels, predictions, n_classes).astype(np.float64)
    true_positive = np.diagonal(cm, axis1=-2, axis2=-1)
    predicted = cm.sum(axis=-2)
    actual = cm.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        f1 = np.where(predicted + actual > 0, 2 * true_positive / (predicted + actual), 0.0)
    if positive_class is not None:
        return {"precision": precision[..., positive_class], "recall": recall[..., positive_class],
                "f1": f1[..., positive_class]}  # fmt: skip
    present = (predicted + actual) > 0
    n_present = present.sum(axis=-1)
    return {name: (values * present).sum(axis=-1) / n_present
            for name, values in (("precision", precision), ("recall", recall), ("f1", f1))}  # fmt: skip
