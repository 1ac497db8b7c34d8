"""The student: a classifier trained on a project's own labels over sentence embeddings, the cascade's member 0.

Logistic regression (multinomial, L2, scikit-learn's solver) on unit-length sentence embeddings of the texts
(all-MiniLM-L6-v2 by default, :mod:`ls_backend.embeddings`). Its class logits are the linear decision values
``x @ coef_.T + intercept_`` over the project's classes (a class that no training label has gets
:data:`ABSENT_LOGIT`), so the cascade reads it like an LLM: the logits go through a calibrator, and the student's
calibrator is temperature scaling fitted on its **out-of-fold** logits (each fold's logits from a model fitted on
the other folds), which is what the student's logits look like on texts it was not fitted on.

Plain data: :meth:`EmbeddingStudent.to_dict` is JSON (no pickle, no scikit-learn object); predicting needs only
numpy. Pure: numpy in, numpy out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from ls_backend.calibration import TemperatureScaling, make_calibrator

ABSENT_LOGIT = -30.0
"""The logit of a class the student never saw a label of: it is never its answer, and its probability is ~1e-13."""
FORMAT = "lwc-embedding-student"
NAME = "student"
"""The student's name in a cascade's member list (it is member 0, before the LLMs)."""


class EmbeddingStudent:
    """Logistic regression on sentence embeddings with a temperature fitted on out-of-fold logits.

    Args:
        n_classes: the project's number of classes (class indices are ``[0, n_classes)``).
        C: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        n_folds: folds of the out-of-fold logits the temperature is fitted on (fewer when a class has fewer items).
        seed: seed of the fold assignment.
    """

    def __init__(self, n_classes: int, C: float = 1.0, n_folds: int = 5, seed: int = 0) -> None:
        if n_classes < 2:
            raise ValueError(f"a student needs at least 2 classes, got {n_classes}")
        self.n_classes = int(n_classes)
        self.C = float(C)
        self.n_folds = int(n_folds)
        self.seed = int(seed)

    # ---- fitting

    def fit(self, embeddings: Any, labels: Any, sample_weight: Any | None = None) -> Self:
        """Fit on labeled items: embeddings (n, d), labels (n,) in ``[0, n_classes)``, optional weights (n,)."""
        x, y = self._check(embeddings, labels)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        present = np.unique(y)
        if present.size < 2:
            raise ValueError(
                f"a student needs labels of at least 2 classes, got only class {present.tolist()}"
            )
        self.coef_, self.intercept_ = _fit_linear(x, y, w, self.n_classes, self.C)
        oof = self._out_of_fold_logits(x, y, w)
        self.oof_logits_ = oof  # what the student's logits look like on texts it was not fitted on
        self.calibrator_: TemperatureScaling = make_calibrator("ST").fit(oof, y, sample_weight=w)  # type: ignore[assignment]
        self.n_labels_ = int(y.size)
        self.dim_ = int(x.shape[1])
        return self

    def _out_of_fold_logits(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        counts = np.bincount(y, minlength=self.n_classes)
        folds = max(2, min(self.n_folds, int(counts[counts > 0].min())))
        rng = np.random.default_rng(self.seed)
        fold_of = np.empty(y.size, dtype=np.int64)
        for c in np.flatnonzero(counts):  # stratified: each class spread over the folds
            members = rng.permutation(np.flatnonzero(y == c))
            fold_of[members] = np.arange(members.size) % folds
        oof = np.empty((y.size, self.n_classes))
        for f in range(folds):
            test = fold_of == f
            train = ~test
            if np.unique(y[train]).size < 2:  # a fold that leaves one class: the full model stands in
                oof[test] = _logits(x[test], self.coef_, self.intercept_)
                continue
            coef, intercept = _fit_linear(
                x[train], y[train], None if w is None else w[train], self.n_classes, self.C
            )
            oof[test] = _logits(x[test], coef, intercept)
        return oof

    # ---- predicting

    def is_fitted(self) -> bool:
        return hasattr(self, "coef_")

    def logits(self, embeddings: Any) -> np.ndarray:
        """The student's class logits (n, n_classes) for embeddings (n, d): uncalibrated, like an LLM's."""
        if not self.is_fitted():
            raise ValueError("this EmbeddingStudent is not fitted yet: call fit(embeddings, labels) first")
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim_:
            raise ValueError(f"embeddings must have shape (n, {self.dim_}), got {x.shape}")
        return _logits(x, self.coef_, self.intercept_)

    def predict_proba(self, embeddings: Any) -> np.ndarray:
        """Calibrated class probabilities (n, n_classes)."""
        return self.calibrator_.predict_proba(self.logits(embeddings))

    # ---- plain data

    def to_dict(self) -> dict[str, Any]:
        if not self.is_fitted():
            raise ValueError("only a fitted student can be saved")
        return {
            "format": FORMAT,
            "params": {"n_classes": self.n_classes, "C": self.C, "n_folds": self.n_folds, "seed": self.seed},
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_.tolist(),
            "calibrator": self.calibrator_.to_dict(),
            "n_labels": self.n_labels_,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbeddingStudent:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError("not a student (format lwc-embedding-student)")
        student = cls(**dict(d["params"]))
        coef = np.asarray(d["coef"], dtype=np.float64)
        intercept = np.asarray(d["intercept"], dtype=np.float64)
        if coef.ndim != 2 or coef.shape[0] != student.n_classes or intercept.shape != (student.n_classes,):
            raise ValueError(f"student state has shapes {coef.shape} and {intercept.shape}")
        student.coef_, student.intercept_ = coef, intercept
        student.dim_ = int(coef.shape[1])
        calibrator = TemperatureScaling.from_dict(d["calibrator"])
        student.calibrator_ = calibrator  # type: ignore[assignment]
        student.n_labels_ = int(d.get("n_labels", 0))
        return student

    def _check(self, embeddings: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(embeddings, dtype=np.float64)
        y = np.asarray(labels)
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise ValueError(f"embeddings (n, d) and labels (n,) needed, got {x.shape} and {y.shape}")
        if not np.isfinite(x).all():
            raise ValueError("embeddings must be finite")
        if not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= self.n_classes).any():
            raise ValueError(f"labels must be class indices in [0, {self.n_classes})")
        return x, y.astype(np.int64)


def _fit_linear(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None, n_classes: int, C: float
) -> tuple[np.ndarray, np.ndarray]:
    """(coef (n_classes, d), intercept (n_classes,)) of an L2 logistic regression; absent classes get a zero row
    and :data:`ABSENT_LOGIT` as intercept. Two classes are written as their symmetric multinomial form."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    model = LogisticRegression(C=C, max_iter=1000).fit(x, y, sample_weight=w)
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.full(n_classes, ABSENT_LOGIT)
    if present.size == 2:  # scikit-learn keeps one row (log-odds of the second class): split it symmetrically
        half_coef, half_intercept = model.coef_[0] / 2, model.intercept_[0] / 2
        coef[present[1]], intercept[present[1]] = half_coef, half_intercept
        coef[present[0]], intercept[present[0]] = -half_coef, -half_intercept
    else:
        coef[present], intercept[present] = model.coef_, model.intercept_
    return coef, intercept


def _logits(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return x @ coef.T + intercept
