"""The paper's calibration experiment as the reproduction runs it, and the pooled reliability curves of its best
in-task cells."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ls_backend import calibration, confidence, metrics
from ls_backend.benchmark.settings import Settings
from ls_backend.experiments import (
    CalibrationExperiment,
    CellTrace,
    ExperimentConfig,
    Scenario,
    run_calibration_experiment,
)
from ls_backend.scores import ScoresTable


@dataclass
class CalibrationRun:
    """The experiment and, by (LLM, task, scenario), the items of the cells kept for the reliability curves."""

    experiment: CalibrationExperiment
    traces: dict[tuple[str, str, str], CellTrace] = field(default_factory=dict)


def run_calibration(
    table: ScoresTable,
    embeddings: Any,
    settings: Settings,
    progress: bool,
    keep_shots: int | None,
    n_jobs: int = 1,
) -> CalibrationRun:
    """The paper's calibration experiment, its (task, LLM) pairs in ``n_jobs`` worker processes (the same
    result); keeps the first repeat's items of the cells at ``keep_shots``."""
    config = ExperimentConfig(shots=settings.shots, repeats=settings.repeats, n_bins=settings.ace_bins,
                              n_clusters=settings.n_clusters, seed=settings.seed)  # fmt: skip
    traces: dict[tuple[str, str, str], CellTrace] = {}

    def keep(trace: CellTrace) -> None:
        scenario = Scenario.from_key(trace.scenario)
        if trace.repeat == 0 and scenario.shots == keep_shots:
            traces[trace.llm, trace.task, trace.scenario] = trace

    experiment = run_calibration_experiment(
        table, embeddings, config, progress=progress, on_cell=keep, n_jobs=n_jobs
    )
    return CalibrationRun(experiment, traces)


def scenario_label(key: str) -> str:
    """An in-task scenario as 'sampler/calibrator, N shots'; other scenarios by their key."""
    scenario = Scenario.from_key(key)
    if scenario.setting == "in-task":
        return f"{scenario.sampler}/{scenario.calibrator}, {scenario.shots} shots"
    return key


def reliability_curves(
    table: ScoresTable, run: CalibrationRun, best: Mapping[str, str], n_bins: int
) -> tuple[dict[str, dict[str, metrics.ReliabilityCurve]], dict[str, tuple[float, float]]]:
    """Per LLM: the reliability curve of the pooled held-out items of every task before and after the LLM's
    best in-task calibration (the first repeat of that cell, refitted on the same items), and both ACEs."""
    curves: dict[str, dict[str, metrics.ReliabilityCurve]] = {}
    aces: dict[str, tuple[float, float]] = {}
    for llm, key in best.items():
        before, after, hits = [], [], []
        for task in table:
            trace = run.traces.get((llm, task.name, key))
            if trace is None:
                continue
            li = task.llm_index(llm)
            position = {item: i for i, item in enumerate(task.items.astype(str))}
            fit = np.array([position[i] for i in trace.fit_items], dtype=np.int64)
            heldout = np.array([position[i] for i in trace.eval_items], dtype=np.int64)
            logits, answers, labels = task.logits[li], task.answers[li], task.labels
            fitted = calibration.make_calibrator(Scenario.from_key(key).calibrator).fit(
                logits[fit], labels[fit]
            )
            before.append(confidence.confidence_scores(logits[heldout], answers[heldout]))
            after.append(confidence.confidence_scores(logits[heldout], answers[heldout], fitted))
            hits.append(answers[heldout] == labels[heldout])
        if not hits:
            continue
        s0, s1, h = np.concatenate(before), np.concatenate(after), np.concatenate(hits)
        a0, a1 = metrics.ace(s0, h, n_bins), metrics.ace(s1, h, n_bins)
        aces[llm] = (a0, a1)
        curves[llm] = {
            f"uncalibrated (pooled ACE {a0:.3f})": metrics.reliability_curve(s0, h, n_bins),
            f"{scenario_label(key)} (pooled ACE {a1:.3f})": metrics.reliability_curve(s1, h, n_bins),
        }
    return curves, aces
