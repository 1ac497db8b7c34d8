"""A servable model: per-LLM calibrators plus a cascade policy, how it answers and scores, and how it is evaluated.

Each LLM has an **answer rule** (:data:`ANSWER_RULES`): ``llm`` keeps the LLM's own answer (the paper's method),
``calibrated`` answers with the argmax of its calibrated (and bias-corrected) class probabilities. Either way the
LLM's score is the calibrated probability of its answer, and these answers and scores are what the policy sees.

The served score of an answer (what Label Studio shows, what routes a task to review) is the calibrated
probability of the cascade's final class under the **served distribution**: the deciding LLM's calibrated
distribution when the policy answered with one LLM (``llm<j>``); for a vote (``majority``,
``weighted_majority``, ``most_confident``) the mean of the calibrated distributions of the LLMs that answered
the final class (its supporters; the dissenters' weight is already in the vote's outcome). With calibrated
answers every supporter's most probable class is the final class, so the final class is the most probable under
the served distribution: answer and score agree. It is numpy in, numpy out; the version files live in
:mod:`ls_backend.loop.versions`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ls_backend.calibration import Calibrator, calibrator_from_dict, make_calibrator
from ls_backend.ensemble.policy import GO_DEEPER, CascadePolicy, CascadeResult
from ls_backend.ensemble.strategies import level_strategy_ids, resolve_strategies
from ls_backend.metrics import reliability_bins, weighted_ace

LLMScoreFunction = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``score_llm(k, item_indices) -> (answers (m,), class logits (m, C), costs (m,))`` for LLM k (0 = cheapest)."""

_SINGLE = re.compile(r"llm(\d+)")

ANSWER_RULES = ("llm", "calibrated")
"""How an LLM's answer is read: its own answer (``llm``) or the argmax of its calibrated probabilities."""


def check_answer_rules(rules: str | Sequence[str], n_llms: int) -> tuple[str, ...]:
    """One answer rule per LLM, from one rule for all or a list (validated)."""
    listed = (rules,) * n_llms if isinstance(rules, str) else tuple(rules)
    if len(listed) != n_llms:
        raise ValueError(f"got {len(listed)} answer rules for {n_llms} LLMs")
    bad = [r for r in listed if r not in ANSWER_RULES]
    if bad:
        raise ValueError(f"unknown answer rule(s) {bad}; expected one of {list(ANSWER_RULES)}")
    return listed


def answers_and_scores(
    probabilities: np.ndarray, llm_answers: np.ndarray, rule: str
) -> tuple[np.ndarray, np.ndarray]:
    """An LLM's answers (n,) under its answer rule and their calibrated probabilities (n,), from its calibrated
    class probabilities (n, C) and its own answers (n,)."""
    answers = (
        probabilities.argmax(axis=1) if rule == "calibrated" else np.asarray(llm_answers, dtype=np.int64)
    )
    return answers, probabilities[np.arange(answers.size), answers]


def calibrated_answers(
    calibrators: Sequence[Calibrator], logits: np.ndarray, llm_answers: np.ndarray, rules: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Every LLM's answers under its rule and their calibrated scores (L, n), from logits (L, n, C) and the LLMs'
    own answers (L, n): what a policy is trained on and what it sees when serving."""
    pairs = [
        answers_and_scores(np.clip(c.predict_proba(logits[k]), 0.0, 1.0), llm_answers[k], rules[k])
        for k, c in enumerate(calibrators)
    ]
    return np.stack([a for a, _ in pairs]), np.stack([s for _, s in pairs])


@dataclass
class ServedPredictions:
    """What a model answered for a batch.

    Attributes:
        predictions: the final class index (n,).
        scores: the served (calibrated) confidence of that class (n,).
        depth: how many LLMs were asked (n,).
        costs: what was spent per item (n,), summed over the LLMs asked.
        cascade: the policy's full trace (per-level answers, scores, keys, actions).
    """

    predictions: np.ndarray
    scores: np.ndarray
    depth: np.ndarray
    costs: np.ndarray
    cascade: CascadeResult


def threshold_policy(
    llms: Sequence[str],
    classes: Sequence[str],
    threshold: float = 0.8,
    metadata: dict[str, Any] | None = None,
) -> CascadePolicy:
    """The default policy before any in-task label: LLM k answers when its calibrated score is >= ``threshold``,
    else the next LLM is asked; the last LLM always answers. No training data stands behind it (counts are 0)."""
    n_llms = len(llms)
    if n_llms < 1:
        raise ValueError("a policy needs at least one LLM")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    strategies = resolve_strategies(None, n_llms)
    level_ids = level_strategy_ids(strategies, n_llms)
    sizes = [2 ** (k + 1) for k in range(n_llms)]
    actions = []
    for k, size in enumerate(sizes):
        # key = bins of the LLMs so far, last digit = this LLM's bin: 1 means score >= threshold.
        confident = np.arange(size) % 2 == 1
        answer_here = confident | (k == n_llms - 1)
        actions.append(np.where(answer_here, k, GO_DEEPER).astype(np.int64))  # strategy k is "llm{k}"
    return CascadePolicy(
        edges=[np.array([float(threshold)]) for _ in range(n_llms)],
        strategies=tuple(s.name for s in strategies),
        level_strategies=level_ids,
        actions=actions,
        counts=[np.zeros(s, dtype=np.int64) for s in sizes],
        hits=[np.zeros((s, ids.size)) for s, ids in zip(sizes, level_ids, strict=True)],
        costs=[np.zeros(s) for s in sizes],
        now_values=[np.zeros(s) for s in sizes],
        deeper_values=[np.zeros(s) for s in sizes[:-1]],
        n_classes=len(classes),
        llms=tuple(llms),
        classes=tuple(classes),
        metadata={"kind": "threshold", "threshold": float(threshold), **(metadata or {})},
    )


class ServingModel:
    """Calibrators (one per LLM) and a cascade policy over the same LLMs and classes.

    Args:
        llms: LLM names, cheapest first (the order the policy asks them).
        classes: class names; index i of logits and answers is ``classes[i]``.
        calibrators: one fitted calibrator (or its ``to_dict``) per LLM.
        policy: the cascade policy (trained on answers and scores read with the same answer rules).
        answer: the answer rule of every LLM (one rule, or one per LLM; see :data:`ANSWER_RULES`).
        student: a classifier on the project's own labels (:class:`ls_backend.student.EmbeddingStudent`, or its
            ``to_dict``) that is member 0 of the cascade, named ``"student"`` in ``llms``; None: LLMs only.
    """

    def __init__(
        self,
        llms: Sequence[str],
        classes: Sequence[str],
        calibrators: Sequence[Calibrator | dict[str, Any]],
        policy: CascadePolicy,
        answer: str | Sequence[str] = "llm",
        student: Any | None = None,
    ) -> None:
        from ls_backend.student import NAME, EmbeddingStudent

        self.llms = tuple(str(m) for m in llms)
        self.classes = tuple(str(c) for c in classes)
        if len(self.llms) < 1 or len(set(self.llms)) != len(self.llms):
            raise ValueError(f"llms must be one or more distinct names, got {list(self.llms)}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be two or more distinct names, got {list(self.classes)}")
        self.calibrators = [c if isinstance(c, Calibrator) else calibrator_from_dict(c) for c in calibrators]
        if len(self.calibrators) != len(self.llms):
            raise ValueError(f"got {len(self.calibrators)} calibrators for {len(self.llms)} LLMs")
        for name, calibrator in zip(self.llms, self.calibrators, strict=True):
            if calibrator.requires_fit and not calibrator.is_fitted():
                raise ValueError(f"the calibrator of LLM {name!r} is not fitted")
            fitted_classes = getattr(calibrator, "n_classes_", len(self.classes))
            if fitted_classes != len(self.classes):
                raise ValueError(
                    f"the calibrator of LLM {name!r} was fitted on {fitted_classes} classes, not {len(self.classes)}"
                )
        if policy.n_llms != len(self.llms):
            raise ValueError(f"the policy has {policy.n_llms} LLMs, the model {len(self.llms)}")
        if policy.n_classes != len(self.classes):
            raise ValueError(f"the policy has {policy.n_classes} classes, the model {len(self.classes)}")
        if policy.llms and tuple(policy.llms) != self.llms:
            raise ValueError(
                f"the policy's LLMs {list(policy.llms)} differ from the model's {list(self.llms)}"
            )
        self.policy = policy
        self.answer = check_answer_rules(answer, len(self.llms))
        self.student = EmbeddingStudent.from_dict(student) if isinstance(student, dict) else student
        if (self.student is not None) != (self.llms[0] == NAME):
            raise ValueError(f"a student must be member 0 of the cascade, named {NAME!r}, and only then")
        if self.student is not None and self.student.n_classes != len(self.classes):
            raise ValueError(
                f"the student has {self.student.n_classes} classes, the model {len(self.classes)}"
            )

    @property
    def llm_names(self) -> tuple[str, ...]:
        """The members that are LLMs (every member but the student)."""
        return self.llms[1:] if self.student is not None else self.llms

    @classmethod
    def out_of_task(
        cls,
        llms: Sequence[str],
        classes: Sequence[str],
        calibrators: Sequence[Calibrator | dict[str, Any]] | None = None,
        policy: CascadePolicy | None = None,
        threshold: float = 0.8,
        answer: str | Sequence[str] = "llm",
    ) -> ServingModel:
        """The model before any in-task label: out-of-task calibrators (default: none, the plain softmax) and a
        given policy (default: :func:`threshold_policy`)."""
        if calibrators is None:
            calibrators = [make_calibrator("none") for _ in llms]
        return cls(llms, classes, calibrators, policy or threshold_policy(llms, classes, threshold), answer)

    # ---- scoring

    def calibrated_probabilities(self, k: int, logits: np.ndarray) -> np.ndarray:
        """LLM k's calibrated class probabilities (n, C)."""
        return np.clip(self.calibrators[k].predict_proba(logits), 0.0, 1.0)

    def llm_answers_and_scores(
        self, k: int, logits: np.ndarray, llm_answers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LLM k's answers under its rule, their calibrated scores and its calibrated probabilities (n, C)."""
        probs = self.calibrated_probabilities(k, logits)
        answers, scores = answers_and_scores(probs, llm_answers, self.answer[k])
        return answers, scores, probs

    def answers_and_scores(
        self, logits: np.ndarray, llm_answers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every LLM's answers and calibrated scores (L, n) on fully known outputs: logits (L, n, C), answers (L, n)
        (what the policy is trained on)."""
        return calibrated_answers(self.calibrators, logits, llm_answers, self.answer)

    def predict_staged(self, score_llm: LLMScoreFunction, n_items: int) -> ServedPredictions:
        """The cascade (Algorithm 2) asking LLM k only about the items that reach it; see :data:`LLMScoreFunction`."""
        n_llms, n_classes = len(self.llms), len(self.classes)
        probabilities = np.full((n_llms, n_items, n_classes), np.nan)
        spent = np.zeros((n_llms, n_items))

        def answer_and_score(k: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            answers, logits, costs = score_llm(k, items)
            answers = np.asarray(answers, dtype=np.int64)
            logits = np.asarray(logits, dtype=np.float64)
            if logits.shape != (items.size, n_classes):
                raise ValueError(
                    f"LLM {self.llms[k]!r} returned logits of shape {logits.shape} for {items.size} items and "
                    f"{n_classes} classes"
                )
            answers, scores, probs = self.llm_answers_and_scores(k, logits, answers)
            probabilities[k, items] = probs
            spent[k, items] = np.asarray(costs, dtype=np.float64)
            return answers, scores

        result = self.policy.predict_staged(answer_and_score, n_items)
        scores = self._final_scores(result, probabilities)
        return ServedPredictions(result.predictions, scores, result.depth, spent.sum(axis=0), result)

    def predict(
        self, logits: np.ndarray, answers: np.ndarray, costs: np.ndarray | None = None
    ) -> ServedPredictions:
        """The cascade on fully known outputs: logits (L, n, C), answers (L, n), costs (L, n) or (L,) or None."""
        logits = np.asarray(logits, dtype=np.float64)
        answers = np.asarray(answers, dtype=np.int64)
        n_llms, n_items = answers.shape
        if logits.shape != (n_llms, n_items, len(self.classes)) or n_llms != len(self.llms):
            raise ValueError(
                f"expected logits of shape {(len(self.llms), n_items, len(self.classes))}, got {logits.shape}"
            )
        full_costs = (
            np.zeros((n_llms, n_items))
            if costs is None
            else np.broadcast_to(np.asarray(costs, dtype=np.float64).reshape(n_llms, -1), (n_llms, n_items))
        )
        return self.predict_staged(
            lambda k, idx: (answers[k, idx], logits[k, idx], full_costs[k, idx]), n_items
        )

    def _final_scores(self, result: CascadeResult, probabilities: np.ndarray) -> np.ndarray:
        n_items = result.predictions.shape[0]
        items = np.arange(n_items)
        scores = np.full(n_items, np.nan)
        if n_items == 0:
            return scores
        decided = result.actions[result.depth - 1, items]
        predicted = result.predictions
        for action in np.unique(decided):
            chosen = items[decided == action]
            match = _SINGLE.fullmatch(self.policy.strategies[int(action)])
            if match:
                scores[chosen] = probabilities[int(match.group(1)), chosen, predicted[chosen]]
            else:
                # the supporters: the LLMs asked that answered the final class (a vote always has one)
                depth = result.depth[chosen]
                asked = np.arange(len(self.llms))[:, None] < depth[None, :]
                supports = asked & (result.answers[:, chosen] == predicted[chosen][None, :])
                final = probabilities[:, chosen, predicted[chosen]]
                scores[chosen] = np.where(supports, final, 0.0).sum(axis=0) / supports.sum(axis=0)
        return scores

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "llms": list(self.llms),
            "classes": list(self.classes),
            "calibrators": [c.to_dict() for c in self.calibrators],
            "policy": self.policy.to_dict(),
            "answer": list(self.answer),
            **({"student": self.student.to_dict()} if self.student is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServingModel:
        for key in ("llms", "classes", "calibrators", "policy"):
            if key not in d:
                raise ValueError(f"model lacks {key!r}")
        # files written before answer rules existed served the LLMs' own answers
        answer = d.get("answer", "llm")
        policy = CascadePolicy.from_dict(d["policy"])
        return cls(d["llms"], d["classes"], d["calibrators"], policy, answer, d.get("student"))


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate(
    model: ServingModel,
    logits: np.ndarray,
    answers: np.ndarray,
    costs: np.ndarray,
    labels: np.ndarray,
    calibration_weights: np.ndarray | None = None,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Held-out metrics of a model: accuracy and cost per item of the cascade on all given items, and the ACE
    of the served score on the items with a calibration weight > 0 (NaN weights count as 0).

    ``calibration_weights`` (n,) weight each item as an estimate over the whole task (see
    :mod:`ls_backend.loop.weighting`); None weights every item 1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    served = model.predict(logits, answers, costs)
    hits = served.predictions == labels
    weights = (
        np.ones(labels.size) if calibration_weights is None else np.nan_to_num(calibration_weights, nan=0.0)
    )
    calibration_items = weights > 0
    result: dict[str, Any] = {
        "n_items": int(labels.size),
        "accuracy": float(hits.mean()) if labels.size else float("nan"),
        "cost_per_item": float(served.costs.mean()) if labels.size else float("nan"),
        "mean_depth": float(served.depth.mean()) if labels.size else float("nan"),
        "n_calibration_items": int(calibration_items.sum()),
        "ace": float("nan"),
        "reliability": None,
    }
    if calibration_items.any():
        s, h, w = served.scores[calibration_items], hits[calibration_items], weights[calibration_items]
        bins = min(n_bins, int(calibration_items.sum()))
        result["ace"] = weighted_ace(s, h, w, bins)
        result["reliability"] = reliability_bins(s, h, w, bins)
    return result
