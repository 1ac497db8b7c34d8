"""Time the calibration core: fitting ST/SV and computing ACE/ECE, each next to an obvious alternative.

Run: .venv/bin/python scripts/bench_calibration.py [--repeats 5] [--quick]

Prints one table: median wall time over repeats and, where an alternative is run side by side in the same
process, the ratio alternative / ours.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from scipy.optimize import minimize

from ls_backend.calibration import TemperatureScaling, VectorScaling
from ls_backend.confidence import softmax
from ls_backend.metrics import ace, ece


def median_seconds(*fns: Callable[[], Any], repeats: int) -> list[float]:
    """Median wall time of each function; the functions take turns in every repeat, so that load from other
    processes falls on all of them alike and their ratio stays fair."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def synthetic_task(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident logits (4 z + noise) with labels drawn from softmax(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n_classes)) * 1.5
    labels = (rng.random(n)[:, None] > np.cumsum(softmax(z), axis=1)).sum(axis=1).clip(0, n_classes - 1)
    return 4 * z + rng.normal(size=(n, n_classes)) * 0.5, labels


def fit_with_numerical_gradient(calibrator: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The same objective and optimizer, but scipy's finite-difference gradient instead of the analytic one."""
    w = np.ones(len(y))
    theta0 = calibrator._identity_theta(x.shape[1])
    result = minimize(
        lambda theta: calibrator.objective(theta, x, y, w)[0],
        theta0,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-10},
    )
    return np.asarray(result.x)


def ace_loop_per_bin(scores: np.ndarray, hits: np.ndarray, n_bins: int = 10) -> float:
    order = np.lexsort((hits, scores))
    gaps = [abs(scores[b].mean() - hits[b].mean()) for b in np.array_split(order, n_bins) if len(b)]
    return float(np.mean(gaps))


def ece_loop_per_bin(scores: np.ndarray, hits: np.ndarray, n_bins: int = 10) -> float:
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        upper = scores <= edges[b + 1] if b == n_bins - 1 else scores < edges[b + 1]
        in_bin = (scores >= edges[b]) & upper
        if in_bin.any():
            total += in_bin.sum() * abs(scores[in_bin].mean() - hits[in_bin].mean())
    return total / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="ten times smaller sizes, for a smoke run")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rows: list[tuple[str, str, float, str, float | None]] = []

    n_fit, n_classes = 100_000 // scale, 10
    x, y = synthetic_task(n_fit, n_classes, seed=0)
    for cls in (TemperatureScaling, VectorScaling):
        (seconds,) = median_seconds(partial(cls().fit, x, y), repeats=args.repeats)
        rows.append((f"fit {cls.name}", f"{n_fit:,} x {n_classes}", seconds, "", None))

    n_small = 10_000 // scale
    xs, ys = x[:n_small], y[:n_small]
    for cls in (TemperatureScaling, VectorScaling):
        ours, numeric = median_seconds(
            partial(cls().fit, xs, ys),
            partial(fit_with_numerical_gradient, cls(), xs, ys),
            repeats=args.repeats,
        )
        fitted = cls().fit(xs, ys)
        theta = np.concatenate(
            [np.ravel(getattr(fitted, a)) for a in ("a_", "A_", "B_") if hasattr(fitted, a)]
        )
        gap = np.abs(fit_with_numerical_gradient(cls(), xs, ys) - theta).max()
        rows.append(
            (
                f"fit {cls.name}",
                f"{n_small:,} x {n_classes}",
                ours,
                f"numerical gradient (max |dθ| {gap:.1e})",
                numeric / ours,
            )
        )

    n_scores = 1_000_000 // scale
    rng = np.random.default_rng(1)
    scores = rng.random(n_scores)
    hits = (rng.random(n_scores) < scores).astype(np.float64)
    assert abs(ace(scores, hits) - ace_loop_per_bin(scores, hits)) < 1e-12
    assert abs(ece(scores, hits) - ece_loop_per_bin(scores, hits)) < 1e-12
    for name, ours_fn, loop_fn in (("ACE", ace, ace_loop_per_bin), ("ECE", ece, ece_loop_per_bin)):
        ours, loop = median_seconds(
            partial(ours_fn, scores, hits), partial(loop_fn, scores, hits), repeats=args.repeats
        )
        rows.append((name, f"{n_scores:,} scores", ours, "Python loop per bin", loop / ours))

    try:
        import torch
        from torchmetrics.functional.classification import binary_calibration_error

        torch.set_num_threads(1)
        preds, target = torch.from_numpy(scores), torch.from_numpy(hits.astype(np.int64))
        ours, theirs = median_seconds(
            lambda: ece(scores, hits),
            lambda: binary_calibration_error(preds, target, n_bins=10, norm="l1"),
            repeats=args.repeats,
        )
        rows.append(("ECE", f"{n_scores:,} scores", ours, "torchmetrics (1 thread)", theirs / ours))
    except ImportError:
        pass

    print(f"{'what':<8} {'size':<18} {'median s':>10}  {'alternative':<38} {'alt / ours':>10}")
    for what, size, seconds, alternative, ratio in rows:
        ratio_text = f"{ratio:10.1f}" if ratio is not None else f"{'':>10}"
        print(f"{what:<8} {size:<18} {seconds:10.4f}  {alternative:<38} {ratio_text}")


if __name__ == "__main__":
    main()
