"""Bins: per-LLM bin edges, and an item's key after k LLMs (the vector of its k bin indices, as one integer).

Edges of one LLM are its B - 1 interior edges, sorted; a score s falls in bin ``b = #{edges <= s}`` (so bin 0 is
``s < edges[0]`` and bin B - 1 is ``s >= edges[-1]``). With B_j bins for LLM j, the key of an item after k LLMs is
the mixed-radix number ``key_k = key_{k-1} * B_k + bin_k`` (``key_0 = 0``): the cheapest LLM's bin is the most
significant digit, the children of key K at level k are ``K * B_{k+1} + b``, and its parent is ``K // B_k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_edges(edges: Sequence[np.ndarray | Sequence[float]], n_llms: int | None = None) -> list[np.ndarray]:
    """Edges as float arrays, validated: one non-decreasing, finite 1-d array per LLM."""
    result = [np.asarray(e, dtype=np.float64) for e in edges]
    if n_llms is not None and len(result) != n_llms:
        raise ValueError(f"need bin edges for {n_llms} LLMs, got {len(result)}")
    if not result:
        raise ValueError("need bin edges for at least one LLM")
    for j, e in enumerate(result):
        if e.ndim != 1:
            raise ValueError(f"bin edges of LLM {j} must be 1-d, got shape {e.shape}")
        if not np.isfinite(e).all():
            raise ValueError(f"bin edges of LLM {j} must be finite, got {e.tolist()}")
        if np.any(np.diff(e) < 0):
            raise ValueError(f"bin edges of LLM {j} must be sorted, got {e.tolist()}")
    return result


def uniform_edges(n_bins: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """The n_bins - 1 interior edges of equal-width bins on [low, high]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.linspace(low, high, n_bins + 1)[1:-1]


def quantile_edges(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """The n_bins - 1 interior edges of equal-frequency bins of ``scores``."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot compute quantile edges of no scores")
    return np.quantile(scores, np.arange(1, n_bins) / n_bins)


def digitize(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each score: the number of edges <= score."""
    return np.searchsorted(edges, scores, side="right")


def n_bins_of(edges: Sequence[np.ndarray]) -> np.ndarray:
    """Number of bins per LLM (one more than its number of edges)."""
    return np.array([len(e) + 1 for e in edges], dtype=np.int64)


def level_sizes(n_bins: np.ndarray) -> np.ndarray:
    """Number of possible keys at each level k = 1..L: the product of the first k bin counts."""
    return np.cumprod(np.asarray(n_bins, dtype=np.int64))


def encode_keys(bins: np.ndarray, n_bins: np.ndarray) -> np.ndarray:
    """Keys at every level from bin indices ``(L, n)``: returns ``(L, n)`` with row k-1 the key after k LLMs."""
    keys = np.empty(bins.shape, dtype=np.int64)
    current = np.zeros(bins.shape[1:], dtype=np.int64)
    for k in range(bins.shape[0]):
        current = current * int(n_bins[k]) + bins[k]
        keys[k] = current
    return keys


def decode_key(key: int, n_bins: Sequence[int]) -> tuple[int, ...]:
    """The bin vector (one bin per LLM, cheapest first) of an integer key at level len(n_bins)."""
    digits = []
    for b in reversed(list(n_bins)):
        key, digit = divmod(int(key), int(b))
        digits.append(digit)
    return tuple(reversed(digits))
