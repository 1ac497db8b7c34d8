"""Which tasks go to humans: confidence bands for review, and the calibration sample (pure numpy).

Bands, from a task's served (calibrated) score and a project's thresholds:

- ``review``: score < ``review`` threshold (or no score): a human should check it;
- ``trusted``: in between;
- ``auto_accept``: score >= ``auto_accept`` threshold (when one is set): accepted without a human.

The calibration sample is drawn from the not-yet-labeled tasks with the paper's in-task samplers (U, SE, IE,
:mod:`ls_backend.sampling`); SE and IE use the surrogate error |uncalibrated score - out-of-task calibrated score|
of the cheapest LLM (asked about every task). Each drawn task comes with its inclusion probability, which the
store keeps so that the calibrators can weight its label (:mod:`ls_backend.loop.weighting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ls_backend.sampling import SamplerName, inclusion_probabilities, sample, surrogate_error

BANDS = ("review", "trusted", "auto_accept")


@dataclass(frozen=True)
class Thresholds:
    """A project's routing thresholds: below ``review`` a task goes to review; at or above ``auto_accept`` (None:
    never) it is accepted automatically."""

    review: float = 0.7
    auto_accept: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.review <= 1.0:
            raise ValueError(f"the review threshold must be in [0, 1], got {self.review}")
        if self.auto_accept is not None and not self.review <= self.auto_accept <= 1.0:
            raise ValueError(
                f"the auto-accept threshold must be in [review threshold {self.review}, 1], got {self.auto_accept}"
            )


def assign_bands(scores: np.ndarray | Sequence[float | None], thresholds: Thresholds) -> np.ndarray:
    """The band of each score (object array of ``"review"``, ``"trusted"``, ``"auto_accept"``); a missing (None or
    NaN) score is ``review``."""
    s = np.array(
        [np.nan if v is None else v for v in np.asarray(scores, dtype=object).ravel()], dtype=np.float64
    )
    if np.isinf(s).any() or (s[np.isfinite(s)] < 0).any() or (s[np.isfinite(s)] > 1).any():
        raise ValueError("scores must lie in [0, 1] (or be missing)")
    bands = np.full(s.shape, "trusted", dtype=object)
    bands[~(s >= thresholds.review)] = "review"  # NaN compares False: missing scores go to review
    if thresholds.auto_accept is not None:
        bands[s >= thresholds.auto_accept] = "auto_accept"
    return bands


def band_counts(bands: np.ndarray) -> dict[str, int]:
    """How many tasks fall in each band (every band listed, zeros included)."""
    values = np.asarray(bands, dtype=object)
    return {band: int((values == band).sum()) for band in BANDS}


@dataclass(frozen=True)
class CalibrationDraw:
    """A calibration sample: the drawn task ids, each one's inclusion probability and surrogate error."""

    task_ids: np.ndarray
    inclusion_probabilities: np.ndarray
    errors: np.ndarray
    method: str


def draw_calibration_sample(
    task_ids: Sequence[int] | np.ndarray,
    uncalibrated_scores: np.ndarray,
    reference_scores: np.ndarray,
    k: int,
    method: SamplerName,
    rng: np.random.Generator,
) -> CalibrationDraw:
    """Draw ``k`` of the given (unlabeled) tasks for calibration with U, SE or IE.

    ``uncalibrated_scores`` and ``reference_scores`` (n,) are the cheapest LLM's score of its answer under the
    plain softmax and under the out-of-task (or current) calibrator. ``k`` larger than the pool takes the pool.
    """
    ids = np.asarray(task_ids, dtype=np.int64)
    if ids.ndim != 1 or np.unique(ids).size != ids.size:
        raise ValueError("task_ids must be distinct integers (n,)")
    errors = surrogate_error(uncalibrated_scores, reference_scores)
    if errors.shape != ids.shape:
        raise ValueError(f"got {errors.size} scores for {ids.size} tasks")
    k = min(int(k), ids.size)
    if k <= 0:
        empty = np.zeros(0)
        return CalibrationDraw(np.zeros(0, dtype=np.int64), empty, empty, method)
    drawn = sample(method, errors, k, rng)
    probabilities = inclusion_probabilities(method, errors, drawn)
    return CalibrationDraw(ids[drawn], probabilities, errors[drawn], method)
