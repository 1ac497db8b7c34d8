"""Fitting a servable model: from other tasks' labels (before any in-task label) and from the project's own.

Both the backend and the benchmark fit through these functions, so what the benchmark measures is what serves:

- :func:`fit_oot_calibrator`: a calibrator fitted on other tasks' labeled items, each task's logits first
  corrected by its own label-free correction (:mod:`ls_backend.calibration`: BC fitted on that task's items, or
  CC on its content-free inputs), so that the calibrator learns what is left after the correction.
- :func:`train_oot_policy`: the default policy (the paper's Algorithm 1 on equal-frequency bins) on the pooled
  items of the other tasks, read through the same corrections, calibrators and answer rules.
- :func:`fit_in_task_model`: per LLM a calibrator on the project's labeled items (after the project's own
  correction), bin edges (tuned by Optuna with enough labels, equal-frequency otherwise) and Algorithm 1.

Numpy in, numpy out; the correction of the project being served is chained in front of every calibrator
(:func:`ls_backend.calibration.corrected`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ls_backend.calibration import BiasCorrection, Calibrator, corrected, make_calibrator
from ls_backend.ensemble.bins import quantile_edges
from ls_backend.ensemble.policy import CascadePolicy, train_policy
from ls_backend.loop.model import ServingModel, calibrated_answers, check_answer_rules
from ls_backend.loop.tuning import make_storage


@dataclass(frozen=True)
class LabeledPart:
    """One task's labeled items for fitting: logits (L, n, C), the LLMs' answers (L, n), labels (n,), costs
    (L, n), and each LLM's label-free correction fitted on that task (None: no correction)."""

    logits: np.ndarray
    answers: np.ndarray
    labels: np.ndarray
    costs: np.ndarray
    corrections: Sequence[BiasCorrection | None]


def apply_correction(correction: BiasCorrection | None, logits: np.ndarray) -> np.ndarray:
    """The corrected logits (n, C); the logits themselves when there is no correction."""
    return logits if correction is None else correction.transform(logits)


def fit_oot_calibrator(name: str, parts: Sequence[LabeledPart], k: int) -> Calibrator:
    """LLM k's calibrator fitted on the pooled, per-task corrected logits of other tasks' labeled items."""
    if not parts:
        raise ValueError("fit_oot_calibrator: no source task")
    x = np.concatenate([apply_correction(p.corrections[k], p.logits[k]) for p in parts])
    y = np.concatenate([p.labels for p in parts])
    return make_calibrator(name).fit(x, y)


def train_oot_policy(
    parts: Sequence[LabeledPart],
    calibrators: Sequence[Calibrator],
    answer: Sequence[str],
    n_bins: int,
    lam: float,
    llms: Sequence[str],
    classes: Sequence[str],
    metadata: dict[str, Any] | None = None,
) -> CascadePolicy:
    """Algorithm 1 on the pooled items of other tasks, each read through its own corrections and the shared
    calibrators (``calibrators[k]`` without a correction), with ``n_bins`` equal-frequency bins per LLM."""
    if not parts:
        raise ValueError("train_oot_policy: no source task")
    answers, scores = [], []
    for part in parts:
        chained = [corrected(c, cal) for c, cal in zip(part.corrections, calibrators, strict=True)]
        a, s = calibrated_answers(chained, part.logits, part.answers, answer)
        answers.append(a)
        scores.append(s)
    pooled_answers, pooled_scores = np.concatenate(answers, axis=1), np.concatenate(scores, axis=1)
    labels = np.concatenate([p.labels for p in parts])
    costs = np.concatenate([p.costs for p in parts], axis=1)
    edges = [quantile_edges(pooled_scores[k], n_bins) for k in range(len(llms))]
    return train_policy(
        pooled_answers,
        pooled_scores,
        labels,
        edges,
        costs=costs,
        lam=lam,
        n_classes=len(classes),
        llms=llms,
        classes=classes,
        calibrators=[c.to_dict() for c in calibrators],
        metadata=metadata,
    )


@dataclass(frozen=True)
class InTaskSettings:
    """How :func:`fit_in_task_model` fits: calibrator name, bins per LLM, the label count from which bin edges
    are tuned (below it: ``max(2, min(n_bins, n // 20))`` equal-frequency bins), tuning trials, splits, seed,
    cost weights and the tuner's time cap.

    ``lam`` is the policy's cost weight in hits per unit of cost (the LLMs' unit); ``cost_weight`` adds one in
    units of the task's own costs: hits per item that asking every member is worth, so going deeper for a bin must
    gain more than ``cost_weight`` x (its extra cost / the cost of all members) hits per item
    (:meth:`lam_for`)."""

    calibrator: str = "ST"
    n_bins: int = 10
    min_tuning_labels: int = 200
    n_trials: int = 100
    n_splits: int = 5
    seed: int = 0
    lam: float = 0.0
    tuning_timeout_s: float | None = 20.0
    cost_weight: float = 0.0

    def lam_for(self, costs: np.ndarray) -> float:
        """The policy's cost weight for items with these member costs (L, n): ``lam`` + ``cost_weight`` / the
        mean cost per item of asking every member."""
        full = float(np.asarray(costs, dtype=np.float64).sum(axis=0).mean()) if np.size(costs) else 0.0
        return self.lam + (self.cost_weight / full if self.cost_weight and full > 0 else 0.0)


@dataclass
class InTaskFit:
    """A fitted candidate: the model, the training answers and scores the policy saw, the edges and tuning facts."""

    model: ServingModel
    answers: np.ndarray
    scores: np.ndarray
    edges: list[np.ndarray]
    tuning: dict[str, Any]


def fit_in_task_model(
    llms: Sequence[str],
    classes: Sequence[str],
    logits: np.ndarray,
    answers: np.ndarray,
    labels: np.ndarray,
    costs: np.ndarray,
    corrections: Sequence[BiasCorrection | None],
    answer: str | Sequence[str],
    settings: InTaskSettings,
    calibration_weights: np.ndarray | None = None,
    calibrators: Sequence[Calibrator] | None = None,
    storage: str | None = None,
    tune: Callable[..., Any] | None = None,
    student: Any | None = None,
) -> InTaskFit:
    """Fit a project's candidate on its labeled items: logits (L, n, C), answers (L, n), labels (n,), costs (L, n).

    Calibrators are fitted on the corrected logits of the items with ``calibration_weights`` > 0 (all when None),
    unless ``calibrators`` are given (then they are used as they are). The policy trains on every item.
    ``student``: the fitted student when member 0 is one (its logits here are its out-of-fold logits, so the
    calibrator and the policy see what it gives on texts it was not fitted on). ``storage`` is handed to the Optuna tuner (None: in memory); ``tune`` replaces
    :func:`ls_backend.ensemble.tuning.tune_bin_edges` (same signature; e.g. the server's tuning in a separate
    process, whose result carries the ``pid`` it ran in).
    """
    n_llms = len(llms)
    rules = check_answer_rules(answer, n_llms)
    if calibrators is None:
        weights = np.ones(labels.size) if calibration_weights is None else calibration_weights
        use = weights > 0
        calibrators = [
            corrected(corrections[k], make_calibrator(settings.calibrator)).fit(
                logits[k][use], labels[use], weights[use]
            )
            for k in range(n_llms)
        ]
    fit_answers, fit_scores = calibrated_answers(calibrators, logits, answers, rules)
    n = labels.size
    lam = settings.lam_for(costs)
    if n >= settings.min_tuning_labels:
        from ls_backend.ensemble.tuning import tune_bin_edges

        options: dict[str, Any] = {"storage": make_storage(storage)} if storage is not None else {}
        tuned = (tune or tune_bin_edges)(
            fit_answers, fit_scores, labels, costs=costs, n_bins=settings.n_bins, n_trials=settings.n_trials,
            n_splits=settings.n_splits, seed=settings.seed, lam=lam, n_classes=len(classes),
            timeout=settings.tuning_timeout_s, **options,
        )  # fmt: skip
        edges, tuning = tuned.edges, {"n_trials": tuned.n_trials, "best_f1": tuned.best_value}
        pid = getattr(tuned, "pid", None)  # set when the tuning ran in another process
        tuning |= {"process": "separate", "pid": pid} if pid is not None else {"process": "worker thread"}
    else:
        bins = max(2, min(settings.n_bins, n // 20))
        edges = [quantile_edges(fit_scores[k], bins) for k in range(n_llms)]
        tuning = {"n_trials": 0, "equal_frequency_bins": bins}
    policy = train_policy(
        fit_answers, fit_scores, labels, edges, costs=costs, lam=lam, n_classes=len(classes),
        llms=llms, classes=classes, calibrators=[c.to_dict() for c in calibrators], metadata={"tuning": tuning},
    )  # fmt: skip
    model = ServingModel(llms, classes, list(calibrators), policy, rules, student)
    return InTaskFit(model, fit_answers, fit_scores, list(edges), tuning)


def fit_correction(
    name: str, unlabeled_logits: np.ndarray | None, content_free_logits: np.ndarray | None
) -> BiasCorrection | None:
    """A label-free correction by name: ``BC`` on unlabeled logits (n, C), ``CC`` on the logits of content-free
    inputs (m, C), ``none`` (None). None too when its inputs are missing (no items yet, no content-free scores)."""
    from ls_backend.calibration import CORRECTIONS, BatchCalibration, ContextualCalibration

    if name not in CORRECTIONS:
        raise ValueError(f"unknown correction {name!r}; expected one of {list(CORRECTIONS)}")
    if name == "BC" and unlabeled_logits is not None and len(unlabeled_logits):
        return BatchCalibration().fit(unlabeled_logits)
    if name == "CC" and content_free_logits is not None and len(content_free_logits):
        return ContextualCalibration().fit(content_free_logits)
    return None
