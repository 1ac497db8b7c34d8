"""Which labeled items to spend on calibration (the paper's label-efficient calibration).

In-task: draw ``k`` of a task's labeled items to fit a calibrator on.

- **U**: uniform, without replacement.
- **SE**: stratified by the surrogate error. Items are sorted by error and cut into strata that each hold an equal
  share of the total error (quantiles of the error-weighted distribution), so the high-error strata are narrow;
  every stratum gets the same number of draws where it can. Equal-*count* strata would make every item equally
  likely to be drawn, i.e. U with balanced coverage; equal-*mass* strata put more draws where the error is.
- **IE**: without replacement with probability proportional to the surrogate error (Efraimidis-Spirakis keys).

The surrogate error needs no label: it is how far an item's uncalibrated score is from its score under an
out-of-task calibrator (:func:`surrogate_error`). Zero errors are raised to a floor of
``ERROR_FLOOR * mean(errors)`` (or to 1 when every error is 0) so that every item can be drawn.

A draw returns distinct integer indices. :func:`inclusion_probabilities` gives each drawn item's chance of having
been drawn and :func:`importance_weights` turns that into weights (``1 / probability``, mean 1) for fitting a
calibrator with ``sample_weight`` so that the weighted loss estimates the loss over the whole task.

Out-of-task: the calibrator is fitted on other tasks' labeled items, all of them (**ALL-OOT**) or those of the
tasks in the target's cluster of task-description embeddings (**SIM-OOT**, :func:`cluster_tasks`,
:func:`oot_source_tasks`).

Everything here is pure numpy: arrays in, arrays out, randomness only from the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

ERROR_FLOOR = 0.01
"""Zero surrogate errors count as this fraction of the mean error, so that such items can still be drawn."""

DEFAULT_N_STRATA = 4

SamplerName = Literal["U", "SE", "IE"]
SAMPLERS: tuple[SamplerName, ...] = ("U", "SE", "IE")


def surrogate_error(uncalibrated_scores: np.ndarray, reference_scores: np.ndarray) -> np.ndarray:
    """The paper's surrogate calibration error of each item: |uncalibrated score - reference score|.

    The reference is the score under an out-of-task calibrator (the paper uses SIM-OOT temperature scaling); it
    needs no label of the target task.
    """
    uncalibrated = _finite_1d(uncalibrated_scores, "uncalibrated_scores")
    reference = _finite_1d(reference_scores, "reference_scores")
    if uncalibrated.shape != reference.shape:
        raise ValueError(
            f"uncalibrated_scores has shape {uncalibrated.shape} but reference_scores has {reference.shape}"
        )
    return np.abs(uncalibrated - reference)


def sample_uniform(n_items: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """U: ``k`` distinct items of ``n_items``, uniformly without replacement (``k > n_items`` is an error)."""
    n_items = int(n_items)
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    _check_budget(k, n_items)
    return np.asarray(rng.choice(n_items, size=k, replace=False), dtype=np.int64)


def error_strata(errors: np.ndarray, n_strata: int = DEFAULT_N_STRATA) -> np.ndarray:
    """Stratum (0 = lowest error) of each item: strata hold equal shares of the total (floored) error.

    Ties are broken by item order, strata that would be empty are dropped (labels stay consecutive), so there are
    at most ``min(n_strata, n)`` strata. With all errors equal this is equal-count quantile strata.
    """
    weights = floored_errors(errors)
    if n_strata < 1:
        raise ValueError(f"n_strata must be >= 1, got {n_strata}")
    n = weights.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(weights, kind="stable")
    sorted_weights = weights[order]
    # Each item's place is the middle of its share of the cumulative error, so one heavy item lands in a high
    # stratum of its own instead of in the stratum where its share starts.
    mass_middle = (np.cumsum(sorted_weights) - 0.5 * sorted_weights) / sorted_weights.sum()
    raw = np.minimum((mass_middle * n_strata).astype(np.int64), n_strata - 1)
    _, consecutive = np.unique(raw, return_inverse=True)
    strata = np.empty(n, dtype=np.int64)
    strata[order] = consecutive
    return strata


def sample_stratified_by_error(
    errors: np.ndarray, k: int, rng: np.random.Generator, n_strata: int = DEFAULT_N_STRATA
) -> np.ndarray:
    """SE: ``k`` distinct items, the same number from each error stratum (:func:`error_strata`) where it can.

    Allocation: every stratum gets ``k // n_strata``, capped at its size, and what is left over is handed out the
    same way among the strata that still have items, until fewer draws remain than such strata; those last draws
    go one each to strata picked at random by ``rng``. Within a stratum the draw is uniform.
    """
    strata = error_strata(errors, n_strata)
    n = strata.size
    _check_budget(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.bincount(strata)
    allocation = _equal_allocation(sizes, k, rng)
    # A random key per item; sorting by (stratum, key) puts each stratum's items in random order.
    order = np.lexsort((rng.random(n), strata))
    sorted_strata = strata[order]
    stratum_start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    position_in_stratum = np.arange(n) - stratum_start[sorted_strata]
    return order[position_in_stratum < allocation[sorted_strata]].astype(np.int64)


def sample_importance_by_error(errors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """IE: ``k`` distinct items drawn one after another with probability proportional to the (floored) error.

    Efraimidis-Spirakis: the ``k`` largest keys ``log(u) / weight``, u uniform in (0, 1); the result is in
    drawing order.
    """
    weights = floored_errors(errors)
    _check_budget(k, weights.size)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.log(1.0 - rng.random(weights.size)) / weights  # 1 - u lies in (0, 1]: no log(0)
    top = np.argpartition(-keys, k - 1)[:k]
    return top[np.argsort(-keys[top], kind="stable")].astype(np.int64)


def sample(
    method: SamplerName,
    errors: np.ndarray,
    k: int,
    rng: np.random.Generator,
    n_strata: int = DEFAULT_N_STRATA,
) -> np.ndarray:
    """Draw with the in-task sampler named ``method`` (``"U"``, ``"SE"`` or ``"IE"``); U ignores the errors."""
    if method == "U":
        return sample_uniform(np.asarray(errors).shape[0], k, rng)
    if method == "SE":
        return sample_stratified_by_error(errors, k, rng, n_strata=n_strata)
    if method == "IE":
        return sample_importance_by_error(errors, k, rng)
    raise ValueError(f"unknown sampler {method!r}; expected one of {list(SAMPLERS)}")


def inclusion_probabilities(
    method: SamplerName, errors: np.ndarray, indices: np.ndarray, n_strata: int = DEFAULT_N_STRATA
) -> np.ndarray:
    """Each drawn item's probability of having been drawn, shape ``(k,)``.

    - U: ``k / n``.
    - SE: ``k_h / N_h`` for an item of stratum h, given the drawn allocation ``k_h`` (exact, conditional on it).
    - IE: Rosén's approximation for order sampling with exponential keys: ``1 - exp(-w_i t)`` with ``t`` such
      that the probabilities over all items sum to ``k`` (accurate to a few percent; exact when ``k = n``).
    """
    errors = np.asarray(errors)
    indices = _check_indices(indices, errors.shape[0])
    n, k = errors.shape[0], indices.size
    if k == 0:
        return np.zeros(0, dtype=np.float64)
    if method == "U":
        return np.full(k, k / n)
    if method == "SE":
        strata = error_strata(errors, n_strata)
        sizes = np.bincount(strata)
        drawn = np.bincount(strata[indices], minlength=sizes.size)
        return drawn[strata[indices]] / sizes[strata[indices]]
    if method == "IE":
        return importance_inclusion_probabilities(errors, k)[indices]
    raise ValueError(f"unknown sampler {method!r}; expected one of {list(SAMPLERS)}")


def importance_weights(probabilities: np.ndarray) -> np.ndarray:
    """Horvitz-Thompson weights ``1 / probability``, scaled to mean 1 (for ``fit(..., sample_weight=...)``)."""
    p = _finite_1d(probabilities, "probabilities")
    if p.size == 0:
        return p
    if (p <= 0).any() or (p > 1 + 1e-12).any():
        raise ValueError("inclusion probabilities must lie in (0, 1]")
    w = 1.0 / p
    return w / w.mean()


def floored_errors(errors: np.ndarray) -> np.ndarray:
    """The errors with zeros raised to ``ERROR_FLOOR * mean`` (all ones if every error is 0); validates them."""
    e = _finite_1d(errors, "errors")
    if (e < 0).any():
        raise ValueError("surrogate errors must be >= 0")
    mean = float(e.mean()) if e.size else 0.0
    if mean == 0.0:
        return np.ones_like(e)
    return np.maximum(e, ERROR_FLOOR * mean)


def importance_inclusion_probabilities(errors: np.ndarray, k: int) -> np.ndarray:
    """Every item's probability of being among IE's ``k`` draws, shape ``(n,)``, summing to ``k``.

    Rosén's approximation for order sampling with keys Exp(w) (Efraimidis-Spirakis): ``1 - exp(-w t)``.
    """
    weights = floored_errors(errors)
    n = weights.size
    _check_budget(k, n)
    if k >= n:
        return np.ones(n)

    def expected(t: float) -> float:
        return float(-np.expm1(-weights * t).sum())

    lo, hi = 0.0, 1.0 / weights.max()
    while expected(hi) < k:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if expected(mid) < k:
            lo = mid
        else:
            hi = mid
    return -np.expm1(-weights * hi)


# ---------------------------------------------------------------------------------------------- out-of-task


def cluster_tasks(
    embeddings: np.ndarray,
    n_clusters: int,
    method: Literal["agglomerative", "kmeans"] = "agglomerative",
    seed: int = 0,
) -> np.ndarray:
    """Cluster label (0, 1, ... in order of first appearance) of each task from its description embedding.

    ``agglomerative``: average-linkage hierarchical clustering on cosine distance, cut at ``n_clusters``.
    ``kmeans``: k-means++ (scipy ``kmeans2``) on the unit-normalized vectors, seeded. ``n_clusters`` larger than
    the number of tasks is reduced to it; clusters may come out fewer than asked (ties, empty k-means clusters).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.cluster.vq import kmeans2

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must have shape (n_tasks, dim) with n_tasks >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("an embedding is all zeros; its cosine distance is undefined")
    n_tasks = x.shape[0]
    n_clusters = min(n_clusters, n_tasks)
    if n_clusters == 1 or n_tasks == 1:
        return np.zeros(n_tasks, dtype=np.int64)
    unit = x / norms
    if method == "agglomerative":
        tree = linkage(unit, method="average", metric="cosine")
        raw = fcluster(tree, t=n_clusters, criterion="maxclust")
    elif method == "kmeans":
        _, raw = kmeans2(unit, n_clusters, minit="++", seed=np.random.default_rng(seed))
    else:
        raise ValueError(f"unknown clustering method {method!r}; expected 'agglomerative' or 'kmeans'")
    _, first_seen, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank_by_first_seen = np.argsort(np.argsort(first_seen))
    return rank_by_first_seen[inverse].astype(np.int64)


@dataclass(frozen=True)
class OOTSources:
    """The tasks whose labeled items fit an out-of-task calibrator for one target task.

    Attributes:
        target: the target task.
        tasks: the source tasks (never the target).
        scenario: ``"ALL-OOT"`` or ``"SIM-OOT"``.
        fallback: why SIM-OOT did not use the target's own cluster (``None`` when it did, or for ALL-OOT).
    """

    target: str
    tasks: tuple[str, ...]
    scenario: str
    fallback: str | None = None


def oot_source_tasks(
    target: str,
    task_names: Sequence[str],
    clusters: np.ndarray | Sequence[int] | None = None,
    *,
    eligible: Collection[str] | None = None,
    embeddings: np.ndarray | None = None,
) -> OOTSources:
    """The other tasks that calibrate ``target`` out of task: ALL-OOT (``clusters`` None) or SIM-OOT.

    ``task_names``, ``clusters`` and ``embeddings`` are aligned. ``eligible`` restricts the sources (e.g. to tasks
    with the target's class list and some labeled item). SIM-OOT takes the eligible tasks of the target's
    cluster. When there is none (the target is alone in its cluster), it falls back to the cluster of the
    eligible task nearest to the target by cosine similarity of ``embeddings`` when they are given, otherwise to
    ALL-OOT; ``fallback`` says which. An empty ``tasks`` means there is no eligible source at all.
    """
    names = list(task_names)
    if target not in names:
        raise ValueError(f"target task {target!r} is not among the {len(names)} task names")
    if len(set(names)) != len(names):
        raise ValueError("task names must be distinct")
    allowed = set(names) if eligible is None else set(eligible)
    candidates = [name for name in names if name != target and name in allowed]
    if clusters is None:
        return OOTSources(target, tuple(candidates), "ALL-OOT")

    labels = np.asarray(clusters)
    if labels.shape != (len(names),):
        raise ValueError(f"clusters must have one label per task ({len(names)}), got shape {labels.shape}")
    label_of = dict(zip(names, labels.tolist(), strict=True))
    same_cluster = [name for name in candidates if label_of[name] == label_of[target]]
    if same_cluster or not candidates:
        return OOTSources(target, tuple(same_cluster), "SIM-OOT")

    if embeddings is None:
        return OOTSources(
            target,
            tuple(candidates),
            "SIM-OOT",
            fallback="no other eligible task in its cluster: used ALL-OOT",
        )
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] != len(names):
        raise ValueError(f"embeddings must have one row per task ({len(names)}), got shape {x.shape}")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    position = {name: i for i, name in enumerate(names)}
    similarity = unit[[position[c] for c in candidates]] @ unit[position[target]]
    nearest = candidates[int(np.argmax(similarity))]
    chosen = [name for name in candidates if label_of[name] == label_of[nearest]]
    return OOTSources(
        target,
        tuple(chosen),
        "SIM-OOT",
        fallback=f"no other eligible task in its cluster: used the cluster of the nearest task {nearest!r}",
    )


# ---------------------------------------------------------------------------------------------- helpers


def _finite_1d(values: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_budget(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"the budget k must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"the budget k must be >= 0, got {k}")
    if k > n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")


def _check_indices(indices: np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError("indices must be a one-dimensional integer array")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    if np.unique(idx).size != idx.size:
        raise ValueError("indices must be distinct")
    return idx.astype(np.int64)


def _equal_allocation(sizes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draws per stratum: equal shares capped by stratum size, the last few to random strata with room."""
    allocation = np.zeros_like(sizes)
    remaining = k
    while remaining:
        room = sizes - allocation
        open_strata = np.flatnonzero(room > 0)
        share = remaining // open_strata.size
        if share == 0:
            lucky = rng.choice(open_strata, size=remaining, replace=False)
            allocation[lucky] += 1
            break
        given = np.minimum(share, room[open_strata])
        allocation[open_strata] += given
        remaining -= int(given.sum())
    return allocation
