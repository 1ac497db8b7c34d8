"""Benchmark of the cascade ensemble: policy training (fast vs a straightforward reference) and bin-edge tuning.

Usage: .venv/bin/python scripts/bench_ensemble.py [--train-items 1000000] [--ref-items 100000]
       [--tune-items 14000] [--trials 400] [--splits 10] [--skip-tuning]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np

from ls_backend.ensemble import GO_DEEPER, default_strategies, train_policy, tune_bin_edges
from ls_backend.ensemble.bins import encode_keys
from ls_backend.loop.tuning import quiet_optuna


def random_data(n_items: int, n_llms: int, n_classes: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_items)
    accuracy = np.linspace(0.6, 0.9, n_llms)[:, None]
    correct = rng.random((n_llms, n_items)) < accuracy
    answers = np.where(correct, labels, (labels + rng.integers(1, n_classes, (n_llms, n_items))) % n_classes)
    scores = np.clip(np.where(correct, 0.75, 0.6) + 0.25 * rng.standard_normal((n_llms, n_items)), 0, 1)
    costs = np.broadcast_to((0.2 * 3.0 ** np.arange(n_llms))[:, None], (n_llms, n_items)).copy()
    return answers, scores, labels, costs


def reference_train(
    answers: np.ndarray, scores: np.ndarray, labels: np.ndarray, edges: list[np.ndarray]
) -> dict:
    """Algorithm 1 the straightforward way: Python loops over items and keys, dicts of counts (lam = 0)."""
    n_llms, n_items = answers.shape
    strategies = default_strategies(n_llms)
    n_classes = int(max(answers.max(), labels.max())) + 1
    n_bins = [len(e) + 1 for e in edges]
    hits: dict[tuple[int, ...], list[int]] = defaultdict(lambda: [0] * len(strategies))
    counts: dict[tuple[int, ...], int] = defaultdict(int)
    for i in range(n_items):
        bins = tuple(int(np.searchsorted(edges[j], scores[j, i], side="right")) for j in range(n_llms))
        for k in range(1, n_llms + 1):
            key = bins[:k]
            counts[key] += 1
            for s, strategy in enumerate(strategies):
                if strategy.min_llms <= k:
                    hits[key][s] += int(
                        strategy(answers[:k, i : i + 1], scores[:k, i : i + 1], n_classes)[0] == labels[i]
                    )
    value: dict[tuple[int, ...], float] = {}
    action: dict[tuple[int, ...], int] = {}
    for k in range(n_llms, 0, -1):
        available = [s for s, strategy in enumerate(strategies) if strategy.min_llms <= k]
        for key in np.ndindex(*n_bins[:k]):
            row = hits[key] if key in hits else [0] * len(strategies)
            best = max(available, key=lambda s: (row[s], -s))
            now, choice = float(row[best]), best
            if k < n_llms:
                deeper = sum(value[(*key, b)] for b in range(n_bins[k]))
                if deeper > now:
                    now, choice = deeper, GO_DEEPER
            value[key], action[key] = now, choice
    return action


def time_best(func, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    quiet_optuna()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-items", type=int, default=1_000_000)
    parser.add_argument("--ref-items", type=int, default=100_000)
    parser.add_argument("--tune-items", type=int, default=14_000)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--skip-tuning", action="store_true")
    args = parser.parse_args()
    print(f"cores visible: {os.cpu_count()}, numpy {np.__version__}")
    edges = [np.linspace(0.1, 0.95, 9)] * 3

    answers, scores, labels, costs = random_data(args.train_items, 3, 2, seed=0)
    seconds = time_best(lambda: train_policy(answers, scores, labels, edges))
    print(f"train_policy, {args.train_items:,} items x 3 LLMs x 10 bins, lam=0: {seconds:.3f} s (best of 3)")
    seconds = time_best(lambda: train_policy(answers, scores, labels, edges, costs=costs, lam=0.01))
    print(f"train_policy, {args.train_items:,} items x 3 LLMs x 10 bins, lam>0 with costs: {seconds:.3f} s")

    answers, scores, labels, costs = random_data(args.ref_items, 3, 2, seed=1)
    fast = time_best(lambda: train_policy(answers, scores, labels, edges))
    start = time.perf_counter()
    reference = reference_train(answers, scores, labels, edges)
    slow = time.perf_counter() - start
    policy = train_policy(answers, scores, labels, edges)
    n_bins = policy.n_bins
    same = all(
        policy.actions[len(key) - 1][int(encode_keys(np.array(key)[:, None], n_bins[: len(key)])[-1, 0])]
        == act
        for key, act in reference.items()
        if policy.counts[len(key) - 1][int(encode_keys(np.array(key)[:, None], n_bins[: len(key)])[-1, 0])]
        > 0
    )
    print(
        f"{args.ref_items:,} items: fast {fast:.4f} s, reference {slow:.2f} s, ratio {slow / fast:.0f}x, "
        f"same decisions on seen keys: {same}"
    )

    if args.skip_tuning:
        return
    from ls_backend.confidence import confidence_scores
    from ls_backend.synthetic import make_synthetic_scores

    task = next(iter(make_synthetic_scores(n_tasks=1, n_items=args.tune_items, seed=0)))
    task_scores = np.stack([confidence_scores(task.logits[j], task.answers[j]) for j in range(3)])
    start = time.perf_counter()
    result = tune_bin_edges(
        task.answers, task_scores, task.labels, costs=task.costs, n_bins=10, n_trials=args.trials,
        n_splits=args.splits, seed=0,
    )  # fmt: skip
    total = time.perf_counter() - start
    from ls_backend.ensemble import SplitEvaluator

    evaluator = SplitEvaluator(task.answers, task_scores, task.labels, n_splits=args.splits, seed=0)
    per_trial = time_best(lambda: evaluator.score(result.edges), repeats=20)
    print(
        f"tune_bin_edges, {args.tune_items:,} items x 3 LLMs, 10 bins, {args.trials} trials x {args.splits} "
        f"splits: {total:.1f} s total; objective {per_trial * 1000:.1f} ms/trial "
        f"(= {per_trial * args.trials:.1f} s of the total, the rest is Optuna's TPE and bookkeeping); "
        f"best mean F1 {result.best_value:.4f}"
    )


if __name__ == "__main__":
    main()
