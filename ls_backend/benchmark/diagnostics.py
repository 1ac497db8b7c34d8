"""How good and how biased each LLM is on its own: accuracy, the AUC of its logit margin and its share of yes
answers on the binary tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ls_backend import metrics
from ls_backend.scores import ScoresTable, TaskScores


def accuracy(task: TaskScores, li: int) -> float:
    labeled = task.labeled
    return float(np.mean(task.answers[li, labeled] == task.labels[labeled]))


def positive_index(task: TaskScores) -> int:
    """The class a binary task's F1 and AUC are about: 'yes' where there is one, else the first."""
    return task.classes.index("yes") if "yes" in task.classes else 0


def margin_auc(task: TaskScores, li: int) -> float:
    """ROC AUC of the LLM's logit margin (positive class minus the other) on a binary task's labeled items."""
    labeled, pos = task.labeled, positive_index(task)
    logits = task.logits[li, labeled]
    return metrics.roc_auc(logits[:, pos] - logits[:, 1 - pos], task.labels[labeled] == pos)


def positive_rate(task: TaskScores, li: int) -> float:
    """Share of a binary task's items the LLM answered with the positive class."""
    return float(np.mean(task.answers[li] == positive_index(task)))


@dataclass(frozen=True)
class Diagnostics:
    """One LLM on each binary task (in the report's order)."""

    accuracy: np.ndarray
    auc: np.ndarray  # of the logit margin
    yes_rate: np.ndarray  # share of items answered with the positive class


def binary_diagnostics(
    table: ScoresTable, binary: Sequence[str], llms: Sequence[str]
) -> dict[str, Diagnostics]:
    """Per LLM, per binary task (in ``binary`` order): accuracy, logit-margin AUC and share of yes answers."""
    tasks = [table[name] for name in binary]
    return {
        llm: Diagnostics(
            accuracy=np.array([accuracy(t, t.llm_index(llm)) for t in tasks]),
            auc=np.array([margin_auc(t, t.llm_index(llm)) for t in tasks]),
            yes_rate=np.array([positive_rate(t, t.llm_index(llm)) for t in tasks]),
        )
        for llm in llms
    }
