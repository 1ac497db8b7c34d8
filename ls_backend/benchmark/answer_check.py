"""Beyond the paper: would answering with the argmax of an in-task vector-scaling calibrator beat the LLM's own
answer? Vector scaling's per-class bias moves the decision threshold, which temperature scaling (the paper's
score) never does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ls_backend import calibration
from ls_backend.benchmark.diagnostics import positive_index
from ls_backend.benchmark.settings import Settings
from ls_backend.benchmark.table3 import cascade_seed
from ls_backend.scores import ScoresTable

METRICS = ("acc_raw", "acc_sv", "f1_raw", "f1_sv")
"""Accuracy and F1 of the positive class, of the LLM's own answer (raw) and of the SV argmax (sv)."""


@dataclass(frozen=True)
class AnswerCheck:
    """Per (LLM, task), means over draws on held-out items: the LLM's own answers against the argmax of an in-task
    vector-scaling calibrator fitted on ``shots`` uniformly drawn labeled items."""

    shots: int
    draws: int
    values: dict[str, dict[str, dict[str, float]]]  # metric (one of METRICS) -> llm -> task -> value

    def mean(self, metric: str, llm: str) -> float:
        return float(np.mean(list(self.values[metric][llm].values())))

    def pairs(self, metric: str) -> np.ndarray:
        return np.array(
            [v for llm in sorted(self.values[metric]) for _, v in sorted(self.values[metric][llm].items())]
        )


def answer_check(table: ScoresTable, llms: Sequence[str], settings: Settings, shots: int) -> AnswerCheck:
    """Own answers against the SV argmax on every binary task with more than ``shots`` labeled items."""
    from ls_backend.ensemble.classification import precision_recall_f1

    draws = max(1, settings.repeats // 4)
    values: dict[str, dict[str, dict[str, float]]] = {m: {llm: {} for llm in llms} for m in METRICS}
    for task in table:
        labeled = np.flatnonzero(task.labeled)
        if labeled.size <= shots:
            continue
        pos = positive_index(task)
        for llm in llms:
            li = task.llm_index(llm)
            got: dict[str, list[float]] = {m: [] for m in values}
            for draw in range(draws):
                rng = np.random.default_rng(cascade_seed(settings.seed + 101, f"{task.name}/{llm}", draw))
                fit = np.zeros(labeled.size, dtype=bool)
                fit[rng.choice(labeled.size, size=shots, replace=False)] = True
                train, test = labeled[fit], labeled[~fit]
                sv = calibration.VectorScaling().fit(task.logits[li, train], task.labels[train])
                labels = task.labels[test]
                for kind, predictions in (("raw", task.answers[li, test]),
                                          ("sv", sv.predict_proba(task.logits[li, test]).argmax(axis=1))):  # fmt: skip
                    got[f"acc_{kind}"].append(float(np.mean(predictions == labels)))
                    got[f"f1_{kind}"].append(float(precision_recall_f1(labels, predictions, 2, pos)["f1"]))
            for m, v in got.items():
                values[m][llm][task.name] = float(np.mean(v))
    return AnswerCheck(shots=shots, draws=draws, values=values)
