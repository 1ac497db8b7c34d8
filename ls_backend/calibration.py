"""Calibrators of class logits, with a scikit-learn-style API and lossless JSON round trips.

- :class:`Identity` ("none"): the plain softmax.
- :class:`TemperatureScaling` ("ST", the paper's scalar scaling): ``softmax(a * x)``.
- :class:`VectorScaling` ("SV", the paper's vector scaling): ``softmax(A * x + B)``, A and B of length C.
- :class:`MatrixScaling` ("MS", beyond the paper): ``softmax(x @ W.T + b)`` with off-diagonal regularization
  (Kull et al. 2019, "Beyond temperature scaling"), for many labeled items.

Label-free bias corrections, fitted on unlabeled logits (``fit(logits)``; labels are not needed and ignored),
a stage before the calibrators above (:class:`CorrectedCalibrator` chains them):

- :class:`BatchCalibration` ("BC", Zhou et al., ICLR 2024): the prompt's bias is estimated from a batch of the
  project's own unlabeled items and subtracted from their log-probabilities, so that the mean corrected
  probability of every class over those items is the target prior (uniform by default).
- :class:`ContextualCalibration` ("CC", Zhao et al., ICML 2021): the bias is the mean class probability of
  content-free inputs ("N/A", "", "[MASK]") under the same prompt; needs no project item.

Both output ``log_softmax(x) - bias_``; softmax then renormalizes.

Each is fitted by maximum likelihood with L-BFGS-B and analytic gradients, plus a Gaussian prior centred on the
identity map (see :data:`DEFAULT_REG` and ``docs/calibration.md``)::

    total(theta) = sum_i w_i * NLL_i(theta) + reg / 2 * ||theta - identity||^2

The prior's weight is fixed while the likelihood grows with n, so it matters only for few labeled items, where it
keeps fits on perfectly separable data finite. The objective is convex (the calibrated logits are linear in
theta), strictly so for ``reg > 0``, so the fit is the unique global optimum.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
from scipy.optimize import minimize

from ls_backend.confidence import softmax

FORMAT_VERSION = 1

CONTENT_FREE_TEXTS: tuple[str, ...] = ("N/A", "", "[MASK]")
"""The content-free inputs of contextual calibration (Zhao et al. 2021), scored under the project's prompt."""

DEFAULT_REG = 1.0
"""Precision of the Gaussian prior around the identity map (a = 1; A = 1, B = 0; W = I, b = 0).

reg = 1 is a unit-variance prior: a priori the temperature is 1 give or take 1, and a bias is 0 give or take one
logit, which is the scale on which LLM class logits move. Its curvature equals the Fisher information of about one
item whose logit spread is one unit, so a handful of labeled items already outweigh it, while with none it keeps
the identity map (the uncalibrated softmax). Set ``reg=0`` for the plain maximum-likelihood fit of the paper.
"""


class NotFittedError(ValueError, AttributeError):
    """A calibrator used before ``fit`` (same bases as scikit-learn's ``NotFittedError``)."""


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before the gradient vanished."""


def _check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    x = np.asarray(logits)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, C), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: no items (shape {x.shape})")
    if x.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got shape {x.shape}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        kind = "NaN" if np.isnan(x).any() else "infinite"
        rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{name} contain {kind} values (item(s) {rows[:10].tolist()})")
    return x


def _check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape {(n,)} to match logits, got {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if bad.size:
        raise ValueError(
            f"label(s) {y[bad[:10]].tolist()} (item(s) {bad[:10].tolist()}) outside the classes [0, {n_classes}); "
            "-1 marks an unlabeled item, which cannot be used for fitting"
        )
    return y.astype(np.intp)


def _check_weights(sample_weight: Any | None, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    w = np.asarray(sample_weight)
    if w.dtype == np.bool_ or not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape {(n,)} to match logits, got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinite values")
    if (w < 0).any():
        raise ValueError(f"sample_weight must be >= 0, got {w[w < 0][:10].tolist()}")
    if w.sum() <= 0:
        raise ValueError("sample_weight sums to 0: nothing to fit")
    return w


def _check_reg(reg: float, name: str = "reg") -> float:
    value = float(reg)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {reg!r}")
    return value


class Calibrator(ABC):
    """Base class: maps class logits (n, C) to calibrated class logits (n, C).

    Subclasses set ``name``, ``param_names`` (constructor parameters) and ``state_names`` (fitted attributes,
    ending in ``_``), and implement ``_fit`` and ``_transform``.
    """

    name: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ()
    requires_fit: ClassVar[bool] = True

    n_classes_: int

    def fit(self, logits: Any, labels: Any, sample_weight: Any | None = None) -> Self:
        """Fit on labeled items: logits (n, C), labels (n,) in [0, C), optional weights (n,) >= 0."""
        x = _check_logits(logits)
        y = _check_labels(labels, x.shape[0], x.shape[1])
        w = _check_weights(sample_weight, x.shape[0])
        self._fit(x, y, w)
        self.n_classes_ = int(x.shape[1])
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated class logits, same shape as ``logits``."""
        x = _check_logits(logits)
        self._check_fitted(x.shape[1])
        return self._transform(x)

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated class probabilities (n, C): the softmax of :meth:`transform`."""
        return softmax(self.transform(logits))

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names}

    def is_fitted(self) -> bool:
        return all(hasattr(self, name) for name in self.state_names)

    def _check_fitted(self, n_classes: int) -> None:
        if not self.is_fitted():
            if self.requires_fit:
                raise NotFittedError(
                    f"this {type(self).__name__} is not fitted yet: call fit(logits, labels) first"
                )
            return
        if n_classes != self.n_classes_:
            raise ValueError(
                f"{type(self).__name__} was fitted on {self.n_classes_} classes, got {n_classes}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (floats as JSON numbers) from which :meth:`from_dict` rebuilds an equal calibrator."""
        state = {name: _to_json(getattr(self, name)) for name in self.state_names if hasattr(self, name)}
        return {
            "calibrator": self.name,
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "state": state,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        """Rebuild a calibrator written by :meth:`to_dict`."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a dict from to_dict(), got {type(d).__name__}")
        missing = [k for k in ("calibrator", "params", "state") if k not in d]
        if missing:
            raise ValueError(f"calibrator dict lacks key(s) {missing}")
        if d["calibrator"] != cls.name:
            raise ValueError(f"dict describes calibrator {d['calibrator']!r}, not {cls.name!r}")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported calibrator format_version {version!r} (this code reads {FORMAT_VERSION})"
            )
        unknown = set(d["params"]) - set(cls.param_names)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {cls.name!r}")
        calibrator = cls(**d["params"])
        state = d["state"]
        unknown = set(state) - set(cls.state_names)
        if unknown:
            raise ValueError(f"unknown state field(s) {sorted(unknown)} for {cls.name!r}")
        if state:
            absent = [name for name in cls.state_names if name not in state]
            if absent:
                raise ValueError(f"state of {cls.name!r} lacks field(s) {absent}")
            for name in cls.state_names:
                setattr(calibrator, name, _from_json(state[name]))
            calibrator._check_state()
        return calibrator

    def _check_state(self) -> None:  # noqa: B027 (optional hook: calibrators without state need no check)
        """Validate restored state (shapes agree with n_classes_)."""

    @abstractmethod
    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None: ...

    @abstractmethod
    def _transform(self, x: np.ndarray) -> np.ndarray: ...

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()  # float64 -> Python float; json writes its shortest round-trip repr
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return np.asarray(value, dtype=np.float64)
    return value


class Identity(Calibrator):
    """No calibration ("none"): the plain softmax. Usable without ``fit`` (fitting only records C)."""

    name = "none"
    state_names = ("n_classes_",)
    requires_fit = False

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        pass

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x.copy()


class _LikelihoodCalibrator(Calibrator, ABC):
    """Shared maximum-likelihood fit for calibrators whose calibrated logits are linear in parameters theta."""

    param_names: ClassVar[tuple[str, ...]] = ("reg", "max_iter")

    n_iter_: int
    converged_: bool

    def __init__(self, reg: float = DEFAULT_REG, max_iter: int = 1000) -> None:
        self.reg = reg
        self.max_iter = max_iter

    # Subclasses: parameter layout, calibrated logits and the chain rule back to theta.
    @abstractmethod
    def _identity_theta(self, n_classes: int) -> np.ndarray: ...

    def _prior_precision(self, n_classes: int) -> np.ndarray:
        return np.full(self._identity_theta(n_classes).size, _check_reg(self.reg))

    @abstractmethod
    def _logits_of(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _grad_of(self, theta: np.ndarray, x: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """d(sum of loss)/d theta given dz = d(loss)/d(calibrated logits), shape (n, C)."""

    @abstractmethod
    def _set_theta(self, theta: np.ndarray, n_classes: int) -> None: ...

    def objective(
        self, theta: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """The penalized negative log likelihood and its analytic gradient, both divided by sum(w).

        Dividing by the total weight keeps the optimizer's tolerances independent of n; the minimizer is that
        of ``sum_i w_i NLL_i + reg/2 ||theta - identity||^2``.
        """
        n_classes = x.shape[1]
        z = self._logits_of(theta, x)
        rows = np.arange(z.shape[0])
        # One exp pass gives both the log-normalizer and the probabilities (a stable log-sum-exp).
        z_max = z.max(axis=1, keepdims=True)
        dz = np.exp(z - z_max)
        norm = dz.sum(axis=1, keepdims=True)
        nll = (np.log(norm) + z_max)[:, 0] - z[rows, y]
        dz /= norm  # probabilities
        dz[rows, y] -= 1.0
        dz *= w[:, None]
        offset = theta - self._identity_theta(n_classes)
        precision = self._prior_precision(n_classes)
        total_weight = w.sum()
        value = (float(w @ nll) + 0.5 * float(precision @ offset**2)) / total_weight
        grad = (self._grad_of(theta, x, dz) + precision * offset) / total_weight
        return value, grad

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        _check_reg(self.reg)
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter!r}")
        # Rows with zero weight contribute nothing; dropping them saves work.
        keep = w > 0
        x, y, w = x[keep], y[keep], w[keep]
        theta0 = self._identity_theta(x.shape[1])
        result = minimize(
            self.objective,
            theta0,
            args=(x, y, w),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": int(self.max_iter), "ftol": 1e-14, "gtol": 1e-10},
        )
        grad_norm = float(np.max(np.abs(result.jac)))
        # With these tight tolerances the line search can stop at float precision next to the optimum
        # ("ABNORMAL"); a per-item gradient this small is converged for any practical purpose.
        self.converged_ = bool(result.success or grad_norm < 1e-5)
        self.n_iter_ = int(result.nit)
        if not self.converged_:
            warnings.warn(
                f"{type(self).__name__} fit did not converge ({result.message}; max |gradient| {grad_norm:.2e}); "
                "raise max_iter or reg",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._set_theta(np.asarray(result.x, dtype=np.float64), x.shape[1])


class TemperatureScaling(_LikelihoodCalibrator):
    """The paper's scalar scaling (ST): ``softmax(a * x)`` with one scalar ``a`` (the inverse temperature).

    Fitted state: ``a_`` (float), ``n_classes_``, ``n_iter_``, ``converged_``.
    """

    name = "ST"
    state_names = ("a_", "n_classes_", "n_iter_", "converged_")

    a_: float

    def _identity_theta(self, n_classes: int) -> np.ndarray:
        return np.ones(1)

    def _logits_of(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        return theta[0] * x

    def _grad_of(self, theta: np.ndarray, x: np.ndarray, dz: np.ndarray) -> np.ndarray:
        return np.array([np.einsum("ic,ic->", dz, x)])

    def _set_theta(self, theta: np.ndarray, n_classes: int) -> None:
        self.a_ = float(theta[0])

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self.a_ * x

    def _check_state(self) -> None:
        self.a_ = float(self.a_)


class VectorScaling(_LikelihoodCalibrator):
    """The paper's vector scaling (SV): ``softmax(A * x + B)``, elementwise, with A and B of length C.

    The prior pulls A toward 1 and B toward 0; it also fixes B's otherwise free common shift (softmax ignores
    it). Fitted state: ``A_``, ``B_`` (arrays of shape (C,)), ``n_classes_``, ``n_iter_``, ``converged_``.
    """

    name = "SV"
    state_names = ("A_", "B_", "n_classes_", "n_iter_", "converged_")

    A_: np.ndarray
    B_: np.ndarray

    def _identity_theta(self, n_classes: int) -> np.ndarray:
        return np.concatenate([np.ones(n_classes), np.zeros(n_classes)])

    def _logits_of(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        n_classes = x.shape[1]
        return x * theta[:n_classes] + theta[n_classes:]

    def _grad_of(self, theta: np.ndarray, x: np.ndarray, dz: np.ndarray) -> np.ndarray:
        return np.concatenate([np.einsum("ic,ic->c", dz, x), dz.sum(axis=0)])

    def _set_theta(self, theta: np.ndarray, n_classes: int) -> None:
        self.A_ = theta[:n_classes].copy()
        self.B_ = theta[n_classes:].copy()

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x * self.A_ + self.B_

    def _check_state(self) -> None:
        for name in ("A_", "B_"):
            if np.shape(getattr(self, name)) != (self.n_classes_,):
                raise ValueError(f"state {name} must have {self.n_classes_} entries")


class MatrixScaling(_LikelihoodCalibrator):
    """Matrix scaling with off-diagonal and intercept regularization ("MS"): ``softmax(x @ W.T + b)``.

    Beyond the paper (Kull et al. 2019). ``reg`` pulls the diagonal of W toward 1; ``reg_off`` (default: equal
    to ``reg``) pulls the off-diagonal entries of W and b toward 0. It has C^2 + C parameters: use it only
    with many labeled items per class.
    Fitted state: ``W_`` (C, C), ``b_`` (C,), ``n_classes_``, ``n_iter_``, ``converged_``.
    """

    name = "MS"
    param_names: ClassVar[tuple[str, ...]] = ("reg", "reg_off", "max_iter")
    state_names = ("W_", "b_", "n_classes_", "n_iter_", "converged_")

    W_: np.ndarray
    b_: np.ndarray

    def __init__(self, reg: float = DEFAULT_REG, reg_off: float | None = None, max_iter: int = 1000) -> None:
        super().__init__(reg=reg, max_iter=max_iter)
        self.reg_off = reg_off

    def _identity_theta(self, n_classes: int) -> np.ndarray:
        return np.concatenate([np.eye(n_classes).ravel(), np.zeros(n_classes)])

    def _prior_precision(self, n_classes: int) -> np.ndarray:
        reg = _check_reg(self.reg)
        reg_off = reg if self.reg_off is None else _check_reg(self.reg_off, "reg_off")
        matrix = np.where(np.eye(n_classes, dtype=bool), reg, reg_off).ravel()
        return np.concatenate([matrix, np.full(n_classes, reg_off)])

    def _logits_of(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        n_classes = x.shape[1]
        weights = theta[: n_classes * n_classes].reshape(n_classes, n_classes)
        return x @ weights.T + theta[n_classes * n_classes :]

    def _grad_of(self, theta: np.ndarray, x: np.ndarray, dz: np.ndarray) -> np.ndarray:
        return np.concatenate([(dz.T @ x).ravel(), dz.sum(axis=0)])

    def _set_theta(self, theta: np.ndarray, n_classes: int) -> None:
        self.W_ = theta[: n_classes * n_classes].reshape(n_classes, n_classes).copy()
        self.b_ = theta[n_classes * n_classes :].copy()

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x @ self.W_.T + self.b_

    def _check_state(self) -> None:
        if np.shape(self.W_) != (self.n_classes_, self.n_classes_) or np.shape(self.b_) != (self.n_classes_,):
            raise ValueError(
                f"state W_/b_ must have shapes {(self.n_classes_, self.n_classes_)}/{(self.n_classes_,)}"
            )


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of logits (n, C), computed stably."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class BiasCorrection(Calibrator, ABC):
    """A label-free correction: ``log_softmax(x) - bias_``, with ``bias_`` (C,) estimated from unlabeled logits.

    ``fit(logits, labels=None, sample_weight=None)`` follows scikit-learn's unsupervised estimators: ``labels``
    is accepted and ignored. Fitted state: ``bias_`` (C,), ``n_items_`` (rows it was estimated from),
    ``n_classes_``.
    """

    state_names = ("bias_", "n_items_", "n_classes_")

    bias_: np.ndarray
    n_items_: int

    def fit(self, logits: Any, labels: Any | None = None, sample_weight: Any | None = None) -> Self:
        """Estimate the bias from unlabeled logits (n, C); ``labels`` is ignored; optional weights (n,) >= 0."""
        x = _check_logits(logits)
        w = _check_weights(sample_weight, x.shape[0])
        self.bias_ = self._estimate_bias(log_softmax(x), w)
        self.n_items_ = int(np.count_nonzero(w))
        self.n_classes_ = int(x.shape[1])
        return self

    @abstractmethod
    def _estimate_bias(self, log_probs: np.ndarray, w: np.ndarray) -> np.ndarray: ...

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:  # pragma: no cover (fit overrides)
        self.bias_ = self._estimate_bias(log_softmax(x), w)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return log_softmax(x) - self.bias_

    def _check_state(self) -> None:
        self.bias_ = np.asarray(self.bias_, dtype=np.float64)
        if self.bias_.shape != (self.n_classes_,) or not np.isfinite(self.bias_).all():
            raise ValueError(f"state bias_ must be {self.n_classes_} finite numbers")
        self.n_items_ = int(self.n_items_)


class ContextualCalibration(BiasCorrection):
    """Contextual calibration ("CC", Zhao et al., ICML 2021, eq. 5 with W = diag(p_cf)^-1, b = 0).

    ``fit`` takes the class logits of content-free inputs (:data:`CONTENT_FREE_TEXTS`) under the project's
    prompt; ``bias_`` is the log of their mean class probability, so ``softmax(transform(x))`` is
    ``p(x) / p_cf``, renormalized.
    """

    name = "CC"

    def _estimate_bias(self, log_probs: np.ndarray, w: np.ndarray) -> np.ndarray:
        mean_probs = (w[:, None] * np.exp(log_probs)).sum(axis=0) / w.sum()
        bias = np.log(np.maximum(mean_probs, np.finfo(np.float64).tiny))
        return bias - bias.mean()


class BatchCalibration(BiasCorrection):
    """Batch calibration ("BC", Zhou et al., ICLR 2024), in log space, matched to a class prior.

    The bias is the ``b`` at which the mean corrected probability of each class over the fitting items equals
    ``prior[c]`` (uniform when ``prior`` is None): the minimum of the convex
    ``mean_i w_i logsumexp(log p_i - b) + prior . b``, whose gradient is ``prior - mean_i softmax(log p_i - b)``.
    It starts from Zhou et al.'s estimate, the per-class mean of the log-softmax, and is solved by L-BFGS.
    ``bias_`` is centred (mean 0); a common shift does not change the softmax.
    """

    name = "BC"
    param_names: ClassVar[tuple[str, ...]] = ("prior", "max_iter")

    def __init__(self, prior: Any | None = None, max_iter: int = 200) -> None:
        self.prior = None if prior is None else [float(p) for p in np.asarray(prior, dtype=np.float64)]
        self.max_iter = max_iter

    def _target(self, n_classes: int) -> np.ndarray:
        if self.prior is None:
            return np.full(n_classes, 1.0 / n_classes)
        prior = np.asarray(self.prior, dtype=np.float64)
        if prior.shape != (n_classes,) or not np.isfinite(prior).all() or (prior <= 0).any():
            raise ValueError(f"prior must be {n_classes} positive numbers, got {self.prior!r}")
        return prior / prior.sum()

    def _estimate_bias(self, log_probs: np.ndarray, w: np.ndarray) -> np.ndarray:
        target = self._target(log_probs.shape[1])
        keep = w > 0
        log_probs, w = log_probs[keep], w[keep] / w[keep].sum()

        def objective(b: np.ndarray) -> tuple[float, np.ndarray]:
            z = log_probs - b
            z_max = z.max(axis=1, keepdims=True)
            e = np.exp(z - z_max)
            norm = e.sum(axis=1, keepdims=True)
            value = float(w @ (np.log(norm) + z_max)[:, 0] + target @ b)
            grad = target - (w[:, None] * e / norm).sum(axis=0)
            return value, grad

        start = w @ log_probs - np.log(target)
        result = minimize(
            objective,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": int(self.max_iter), "ftol": 1e-15, "gtol": 1e-12},
        )
        bias = np.asarray(result.x, dtype=np.float64)
        return bias - bias.mean()


class CorrectedCalibrator(Calibrator):
    """A label-free correction followed by a calibrator: ``calibrator(correction(x))`` ("corrected").

    Args:
        correction: a :class:`BiasCorrection` (or its name, "BC" or "CC", or its ``to_dict``).
        calibrator: the calibrator applied to the corrected logits (a name such as "ST" or "SV", an instance, or
            its ``to_dict``).

    A correction that is already fitted (on a project's unlabeled items, or on content-free inputs) is kept as it
    is: ``fit`` then fits only the calibrator, on the corrected logits of the labeled items, as scikit-learn's
    "prefit" estimators do. An unfitted correction is fitted first, on the same logits (it needs no labels).
    """

    name = "corrected"
    param_names: ClassVar[tuple[str, ...]] = ("correction", "calibrator")

    def __init__(
        self,
        correction: BiasCorrection | str | Mapping[str, Any] = "BC",
        calibrator: Calibrator | str | Mapping[str, Any] = "ST",
    ) -> None:
        first = _as_calibrator(correction)
        if not isinstance(first, BiasCorrection):
            raise TypeError(f"correction must be a label-free correction (BC, CC), got {first!r}")
        self.correction: BiasCorrection = first
        self.calibrator = _as_calibrator(calibrator)
        if isinstance(self.calibrator, BiasCorrection | CorrectedCalibrator):
            raise TypeError(
                f"the calibrator after a correction must be ST, SV, MS or none, got {self.calibrator!r}"
            )
        if self.correction.is_fitted():
            self.n_classes_ = self.correction.n_classes_

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("n_classes_",)

    def is_fitted(self) -> bool:
        return self.correction.is_fitted() and (
            self.calibrator.is_fitted() or not self.calibrator.requires_fit
        )

    def fit(self, logits: Any, labels: Any, sample_weight: Any | None = None) -> Self:
        """Fit the calibrator on the corrected logits of labeled items (and the correction first, if unfitted)."""
        if not self.correction.is_fitted():
            self.correction.fit(logits, sample_weight=sample_weight)
        self.calibrator.fit(self.correction.transform(logits), labels, sample_weight)
        self.n_classes_ = self.correction.n_classes_
        return self

    def transform(self, logits: Any) -> np.ndarray:
        if not self.is_fitted():
            raise NotFittedError("this CorrectedCalibrator is not fitted yet: call fit(logits, labels) first")
        return self.calibrator.transform(self.correction.transform(logits))

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:  # pragma: no cover (fit overrides)
        self.fit(x, y, w)

    def _transform(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover (transform overrides)
        return self.transform(x)

    def get_params(self) -> dict[str, Any]:
        return {"correction": self.correction.name, "calibrator": self.calibrator.name}

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrator": self.name,
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "state": {},
            "correction": self.correction.to_dict(),
            "then": self.calibrator.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        if not isinstance(d, Mapping) or d.get("calibrator") != cls.name:
            raise ValueError("expected the to_dict() of a 'corrected' calibrator")
        missing = [k for k in ("correction", "then") if k not in d]
        if missing:
            raise ValueError(f"corrected calibrator dict lacks key(s) {missing}")
        return cls(d["correction"], d["then"])

    def __repr__(self) -> str:
        return f"CorrectedCalibrator({self.correction!r}, {self.calibrator!r})"


def _as_calibrator(value: Calibrator | str | Mapping[str, Any]) -> Calibrator:
    if isinstance(value, Calibrator):
        return value
    if isinstance(value, str):
        return make_calibrator(value)
    return calibrator_from_dict(value)


def corrected(correction: BiasCorrection | None, calibrator: Calibrator) -> Calibrator:
    """``calibrator`` after ``correction`` (the calibrator alone when there is no correction)."""
    return calibrator if correction is None else CorrectedCalibrator(correction, calibrator)


CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.name: cls
    for cls in (
        Identity,
        TemperatureScaling,
        VectorScaling,
        MatrixScaling,
        BatchCalibration,
        ContextualCalibration,
        CorrectedCalibrator,
    )
}
CORRECTIONS: tuple[str, ...] = ("none", "CC", "BC")
"""The label-free corrections by name ("none": no correction)."""


def single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread while fitting many calibrators: each fit is a tiny L-BFGS problem, and OpenBLAS
    threads only contend (measured 8-20x slower with 2 threads on a busy 2-core machine, docs/experiments.md)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def make_calibrator(name: str, **params: Any) -> Calibrator:
    """A new calibrator by name: "none", "ST", "SV", "MS", "BC" or "CC", with constructor parameters."""
    try:
        cls = CALIBRATORS[name]
    except KeyError:
        raise ValueError(f"unknown calibrator {name!r}; choose one of {sorted(CALIBRATORS)}") from None
    unknown = set(params) - set(cls.param_names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for calibrator {name!r}; it takes {list(cls.param_names)}"
        )
    return cls(**params)


def calibrator_from_dict(d: Mapping[str, Any]) -> Calibrator:
    """Rebuild any calibrator from :meth:`Calibrator.to_dict` output."""
    if not isinstance(d, Mapping) or "calibrator" not in d:
        raise ValueError("expected a dict from Calibrator.to_dict() with a 'calibrator' key")
    name = d["calibrator"]
    if name not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {name!r}; known: {sorted(CALIBRATORS)}")
    return CALIBRATORS[name].from_dict(d)
