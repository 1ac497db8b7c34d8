"""The embedding student: fit, calibrated out-of-fold temperature, absent classes, plain-data round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ls_backend.metrics import ace
from ls_backend.student import ABSENT_LOGIT, EmbeddingStudent


def blobs(
    n: int, n_classes: int, seed: int, spread: float = 1.0, dim: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around one centre per class."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(n_classes, dim))
    labels = rng.integers(0, n_classes, n)
    x = centres[labels] + rng.normal(size=(n, dim)) * spread * 2
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_fit_returns_self_and_learns_the_classes() -> None:
    x, y = blobs(300, 3, seed=1, spread=0.5)
    student = EmbeddingStudent(3)
    assert student.fit(x[:100], y[:100]) is student
    test_x, test_y = x[100:], y[100:]
    assert (student.predict_proba(test_x).argmax(axis=1) == test_y).mean() > 0.8
    assert student.logits(test_x).shape == (200, 3)


def test_the_out_of_fold_temperature_calibrates_held_out_scores() -> None:
    # few items in many dimensions and almost no regularization: separable, so the fitted logits are far too sharp
    x, y = blobs(2060, 2, seed=2, spread=1.5, dim=64)
    student = EmbeddingStudent(2, C=1e4).fit(x[:60], y[:60])
    test_x, test_y = x[60:], y[60:]
    raw = np.exp(student.logits(test_x))
    raw /= raw.sum(axis=1, keepdims=True)
    calibrated = student.predict_proba(test_x)
    hits = calibrated.argmax(axis=1) == test_y
    assert ace(calibrated.max(axis=1), hits) < ace(raw.max(axis=1), hits)
    assert student.calibrator_.a_ < 1.0  # the in-sample logits were too sharp


def test_a_class_without_labels_is_never_answered() -> None:
    x, y = blobs(200, 3, seed=3)
    keep = y != 2
    student = EmbeddingStudent(3).fit(x[keep], y[keep])
    logits = student.logits(x)
    assert (logits[:, 2] == ABSENT_LOGIT).all()
    assert (student.predict_proba(x).argmax(axis=1) != 2).all()


def test_json_round_trip_is_bit_identical() -> None:
    x, y = blobs(120, 2, seed=4)
    student = EmbeddingStudent(2, seed=7).fit(x, y)
    restored = EmbeddingStudent.from_dict(json.loads(json.dumps(student.to_dict())))
    assert np.array_equal(restored.predict_proba(x), student.predict_proba(x))


def test_bad_input_is_refused() -> None:
    x, y = blobs(40, 2, seed=5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        EmbeddingStudent(2).fit(x, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match="class indices"):
        EmbeddingStudent(2).fit(x, y + 5)
    with pytest.raises(ValueError, match="not fitted"):
        EmbeddingStudent(2).logits(x)
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        EmbeddingStudent(2).fit(x, y).logits(x[:, :3])
    with pytest.raises(ValueError, match="not a student"):
        EmbeddingStudent.from_dict({"format": "other"})
