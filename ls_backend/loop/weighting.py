"""Which human labels fit the calibrators, with what weights (pure numpy).

Labels come from three sources (:mod:`ls_backend.loop.store`):

- ``calibration``: a sample the backend drew from the unlabeled tasks with U, SE or IE; weighted by
  Horvitz-Thompson ``1 / inclusion probability`` (:func:`ls_backend.sampling.importance_weights`, mean 1), so the
  weighted loss estimates the loss over the whole task;
- ``annotator``: tasks annotators chose themselves (Label Studio's queue order); weight 1, as if uniform;
- ``review``: tasks sent to humans *because* their served score was low. They are a census of the low-score
  band, not a sample of the task, so fitting on them as if they were would pull the calibrator toward the
  low-score region. ``review="exclude"`` leaves them out; ``"unweighted"`` adds them with weight 1;
  ``"poststratified"`` adds them but rescales the low-score band so that its total weight stays what the
  calibration and annotator labels estimate it to be. On synthetic tasks (scripts/bench_retrain.py,
  docs/learning-loop.md) ``unweighted`` gave the lowest ACE over the whole task for ST and SV, so the trainer
  uses it by default; the held-out ACE that decides promotion never counts review labels.

All labels (every source) train the cascade policy: its decisions are hit rates within keys (bins of scores),
and review selection depends only on the score, so within a key the review labels are not a biased sample.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ls_backend.sampling import importance_weights

ReviewUse = Literal["exclude", "unweighted", "poststratified"]
REVIEW_USES: tuple[ReviewUse, ...] = ("exclude", "unweighted", "poststratified")


def calibration_weights(
    sources: np.ndarray,
    inclusion_probabilities: np.ndarray,
    review: ReviewUse = "exclude",  # the pure-sample default of this function; LoopConfig picks its own
    in_review_band: np.ndarray | None = None,
) -> np.ndarray:
    """Weight of each labeled item in the calibrators' fit (0 = not used), shape (n,).

    Args:
        sources: (n,) ``"calibration"``, ``"review"`` or ``"annotator"``.
        inclusion_probabilities: (n,) inclusion probability of the calibration items (ignored for others).
        review: how review labels are used (see the module docstring).
        in_review_band: (n,) bool, whether each item's score lies in the review band; needed for
            ``"poststratified"``.
    """
    sources = np.asarray(sources, dtype=object)
    p = np.asarray(inclusion_probabilities, dtype=np.float64)
    if sources.ndim != 1 or p.shape != sources.shape:
        raise ValueError(f"sources {sources.shape} and inclusion_probabilities {p.shape} must be (n,) alike")
    unknown = set(sources.tolist()) - {"calibration", "review", "annotator"}
    if unknown:
        raise ValueError(f"unknown label source(s) {sorted(unknown)}")
    if review not in REVIEW_USES:
        raise ValueError(f"review must be one of {list(REVIEW_USES)}, got {review!r}")
    weights = np.zeros(sources.size)
    calibration = sources == "calibration"
    if calibration.any():
        weights[calibration] = importance_weights(p[calibration])
    weights[sources == "annotator"] = 1.0
    reviewed = sources == "review"
    if review == "exclude" or not reviewed.any():
        return weights
    if review == "unweighted":
        weights[reviewed] = 1.0
        return weights
    if in_review_band is None:
        raise ValueError("review='poststratified' needs in_review_band")
    band = np.asarray(in_review_band, dtype=bool)
    if band.shape != sources.shape:
        raise ValueError(f"in_review_band must have shape {sources.shape}, got {band.shape}")
    sampled_band = band & ~reviewed & (weights > 0)
    band_total = weights[sampled_band].sum()
    if band_total == 0:
        # nothing estimates the band's share: the review labels cannot be placed; leave them out
        return weights
    mean_band_weight = band_total / sampled_band.sum()
    weights[reviewed] = mean_band_weight
    in_band = sampled_band | reviewed
    weights[in_band] *= band_total / weights[in_band].sum()
    return weights
