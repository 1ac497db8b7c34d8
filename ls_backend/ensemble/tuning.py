"""Bin-edge tuning with Optuna: F1 averaged over repeated random train/test splits (Algorithm 1 on the train
part, Algorithm 2 on the test part), searched with a seeded multivariate TPE sampler.

Search space. The number of bins per LLM is fixed (B). LLM j's edges are parameterized by B positive bin weights
``llm{j}_w{i}`` (log-uniform in [min_weight, 1]); the cumulative sums of the normalized weights are fractions
``0 < q_1 < ... < q_{B-1} < 1`` and the edges are the empirical quantiles of LLM j's scores (all items given to
the tuner) at those fractions. Any parameter vector gives sorted edges, equal weights give equal-frequency bins
(the first trial, enqueued as a baseline), and quantile space spends the bins where the scores are, which matters
for over-confident LLMs whose scores crowd near 1.

Speed. Everything that does not depend on the edges is computed once (each strategy's answers and hits at each
level, the splits, the cumulative costs); a trial only digitizes the scores, encodes keys, and runs bincount-based
Algorithm 1 and a gather-based Algorithm 2 for all R splits at once.

Scaling out. ``storage`` is an Optuna storage object, made by the caller (e.g.
:func:`ls_backend.loop.tuning.make_storage` from ``sqlite:///tuning.db`` or ``journal:PATH``); processes or
machines that call :func:`tune_bin_edges` with the same storage, study name and data share one study (give each a
different ``worker_id`` so their samplers differ). ``n_trials`` counts the trials of one call (one worker).

Purity. This module opens no file and changes no process-wide state: where the trials are stored is the caller's
storage, and how loud Optuna's per-trial log is, the entry point's choice
(:func:`ls_backend.loop.tuning.quiet_optuna`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.ensemble._checks import check_answers_scores, check_labels, infer_n_classes, item_costs
from ls_backend.ensemble.bins import digitize, encode_keys, level_sizes
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.ensemble.policy import (
    aggregate_levels,
    cumulative_costs,
    level_predictions,
    route,
    solve_levels,
)
from ls_backend.ensemble.strategies import Strategy, resolve_strategies

if TYPE_CHECKING:
    import optuna

DEFAULT_STUDY_NAME = "lwc-cascade-edges"


def random_splits(n_items: int, n_splits: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """R random train/test splits of equal sizes: (train indices (R, m), test indices (R, n - m))."""
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    n_test = round(test_size * n_items)
    if n_test < 1 or n_test >= n_items:
        raise ValueError(f"cannot split {n_items} items with test_size={test_size}")
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(n_items) for _ in range(n_splits)])
    return np.sort(order[:, n_test:], axis=1), np.sort(order[:, :n_test], axis=1)


class SplitEvaluator:
    """Mean test F1 of the cascade over fixed random splits, for any bin edges (the tuning objective).

    Built once per data set; :meth:`score` is what every trial calls.
    """

    def __init__(
        self,
        answers: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        *,
        costs: np.ndarray | None = None,
        n_splits: int = 10,
        test_size: float = 0.2,
        seed: int = 0,
        lam: float = 0.0,
        positive_class: int | None = None,
        strategies: Sequence[Strategy | str] | None = None,
        n_classes: int | None = None,
    ) -> None:
        answers, scores = check_answers_scores(answers, scores)
        n_llms, n_items = answers.shape
        self.n_classes = infer_n_classes(answers, np.asarray(labels), n_classes)
        labels = check_labels(labels, n_items, self.n_classes)
        if lam and costs is None:
            raise ValueError("a cost-aware objective (lam > 0) needs costs")
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.scores, self.lam, self.positive_class = scores, float(lam), positive_class
        self.strategies = resolve_strategies(strategies, n_llms)
        self.train_idx, self.test_idx = random_splits(n_items, n_splits, test_size, seed)
        predictions = level_predictions(answers, scores, self.strategies, self.n_classes)
        self.level_offsets = np.concatenate([[0], np.cumsum([p.shape[0] for p in predictions])[:-1]])
        self.stacked_predictions = np.concatenate(predictions)
        self.train_hits = [
            np.ascontiguousarray((p == labels)[:, self.train_idx].transpose(1, 0, 2)) for p in predictions
        ]
        cum_costs = cumulative_costs(item_costs(costs, n_llms, n_items))
        self.cum_costs = cum_costs
        self.train_cum_costs = [c[self.train_idx] for c in cum_costs] if lam else None
        self.test_labels = labels[self.test_idx]

    def evaluate(self, edges: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Per split: test precision, recall, F1 and cost per item of the policy trained on the split's train part."""
        n_llms = self.scores.shape[0]
        if len(edges) != n_llms:
            raise ValueError(f"need bin edges for {n_llms} LLMs, got {len(edges)}")
        n_bins = np.array([len(e) + 1 for e in edges], dtype=np.int64)
        bins = np.stack([digitize(self.scores[j], edges[j]) for j in range(n_llms)])
        keys = encode_keys(bins, n_bins)
        hit_sums, counts, cost_sums = aggregate_levels(
            [keys[k][self.train_idx] for k in range(n_llms)],
            self.train_hits,
            self.train_cum_costs,
            level_sizes(n_bins),
        )
        solved = solve_levels(hit_sums, counts, cost_sums, n_bins, self.lam)
        level, position = route(solved.positions, [keys[k][self.test_idx] for k in range(n_llms)])
        predictions = self.stacked_predictions[self.level_offsets[level] + position, self.test_idx]
        result = precision_recall_f1(self.test_labels, predictions, self.n_classes, self.positive_class)
        result["cost_per_item"] = self.cum_costs[level, self.test_idx].mean(axis=1)
        return result

    def score(self, edges: Sequence[np.ndarray]) -> float:
        """The objective: test F1 averaged over the splits."""
        return float(np.mean(self.evaluate(edges)["f1"]))


class QuantileEdgeSpace:
    """The search space: B bin weights per LLM, mapped to sorted edges through the quantiles of its scores."""

    def __init__(self, scores: np.ndarray, n_bins: int, min_weight: float = 0.02) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if not 0 < min_weight < 1:
            raise ValueError(f"min_weight must be in (0, 1), got {min_weight}")
        self.sorted_scores = np.sort(np.asarray(scores, dtype=np.float64), axis=1)
        self.n_bins, self.min_weight = n_bins, min_weight

    @property
    def n_llms(self) -> int:
        return int(self.sorted_scores.shape[0])

    def param_names(self, llm: int) -> list[str]:
        return [f"llm{llm}_w{i}" for i in range(self.n_bins)]

    def equal_params(self) -> dict[str, float]:
        """Equal weights: equal-frequency bins."""
        return {name: 1.0 for j in range(self.n_llms) for name in self.param_names(j)}

    def suggest(self, trial: optuna.Trial) -> list[np.ndarray]:
        params = {
            name: trial.suggest_float(name, self.min_weight, 1.0, log=True)
            for j in range(self.n_llms)
            for name in self.param_names(j)
        }
        return self.edges(params)

    def edges(self, params: dict[str, Any]) -> list[np.ndarray]:
        """Sorted edges from a parameter dict (e.g. a study's best_params)."""
        result = []
        for j in range(self.n_llms):
            weights = np.array([float(params[name]) for name in self.param_names(j)])
            if (weights <= 0).any():
                raise ValueError(f"bin weights must be > 0, got {weights.tolist()}")
            fractions = np.cumsum(weights)[:-1] / weights.sum()
            column = self.sorted_scores[j]
            result.append(np.interp(fractions * (column.size - 1), np.arange(column.size), column))
        return result


@dataclass
class TuningResult:
    """The best edges found, their objective value (mean F1) and the study."""

    edges: list[np.ndarray]
    best_value: float
    best_params: dict[str, Any]
    n_trials: int
    study: optuna.Study


def tune_bin_edges(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    costs: np.ndarray | None = None,
    n_bins: int = 10,
    n_trials: int = 400,
    n_splits: int = 10,
    test_size: float = 0.2,
    seed: int = 0,
    lam: float = 0.0,
    positive_class: int | None = None,
    strategies: Sequence[Strategy | str] | None = None,
    n_classes: int | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    study_name: str = DEFAULT_STUDY_NAME,
    n_jobs: int = 1,
    show_progress_bar: bool = False,
    worker_id: int = 0,
    min_weight: float = 0.02,
    timeout: float | None = None,
) -> TuningResult:
    """Tune the bin edges of every LLM (the paper's Optuna search; see the module docstring)."""
    import optuna

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    evaluator = SplitEvaluator(
        answers, scores, labels, costs=costs, n_splits=n_splits, test_size=test_size, seed=seed, lam=lam,
        positive_class=positive_class, strategies=strategies, n_classes=n_classes,
    )  # fmt: skip
    space = QuantileEdgeSpace(evaluator.scores, n_bins, min_weight)

    def objective(trial: optuna.Trial) -> float:
        result = evaluator.evaluate(space.suggest(trial))
        trial.set_user_attr("cost_per_item", float(result["cost_per_item"].mean()))
        trial.set_user_attr("worker", worker_id)
        return float(np.mean(result["f1"]))

    sampler_seed = int(np.random.SeedSequence([seed, worker_id]).generate_state(1)[0])
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True)
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction="maximize", sampler=sampler, load_if_exists=True
    )
    if not study.trials:
        study.enqueue_trial(space.equal_params())
    study.optimize(
        objective, n_trials=n_trials, n_jobs=n_jobs, timeout=timeout, show_progress_bar=show_progress_bar
    )
    best = study.best_trial
    return TuningResult(
        edges=space.edges(best.params),
        best_value=float(best.value) if best.value is not None else float("nan"),
        best_params=dict(best.params),
        n_trials=len(study.trials),
        study=study,
    )
