#!/usr/bin/env python
"""Reproduce the paper's Tables 1, 2, 3 and 5 from the committed scores of the public benchmark.

::

    .venv/bin/python scripts/reproduce_paper.py [--scores docs/benchmark/scores.jsonl.gz]
        [--tasks docs/benchmark/tasks.yaml] [--out docs/results.md] [--figures docs/figures]
        [--costs SCORES_DIR/costs.json] [--seed 0] [--quick] [--jobs 1] [--task-embeddings FILE.json]
        [--no-progress]
    .venv/bin/python scripts/reproduce_paper.py --write-synthetic DIR   # a synthetic table of the benchmark's size

No LLM is called: everything comes from the scores table (see ls_backend/scores.py) and, when given, the
costs file of ``scripts/measure_costs.py`` (seconds per item of each LLM on each task, measured on a quiet
machine), whose numbers replace the contended ``cost`` column of the table. Binary tasks get the paper's
calibration protocol (uncalibrated, ALL-OOT/SIM-OOT x ST/SV, in-task shots x U/SE/IE x ST/SV:
:func:`ls_backend.experiments.run_calibration_experiment`); multi-class tasks have no out-of-task source with
their class list, so they are reported in-task (U only: SE/IE need an out-of-task reference). Table 3 is
:func:`ls_backend.ensemble.report.cascade_table` on repeated random 80/20 splits of every task, at 5 and 10 bins,
bin edges tuned with Optuna. Claims are backed by paired Wilcoxon tests (:mod:`ls_backend.stats`).

``docs/results.md`` is byte-for-byte the same for the same inputs, seed and settings: no timestamps or timings,
fixed decimals, stable orders. Settings and counts are written into it. See docs/benchmark/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a fresh clone without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend import calibration, confidence, metrics  # noqa: E402
from ls_backend.benchmark.inputs import apply_costs  # noqa: E402
from ls_backend.markdown import fmt, markdown_table, pct, pval  # noqa: E402
from ls_backend.experiments import (  # noqa: E402
    UNCALIBRATED,
    CalibrationExperiment,
    CellTrace,
    ExperimentConfig,
    Scenario,
    run_calibration_experiment,
)
from ls_backend.files import file_sha256  # noqa: E402
from ls_backend.loop.tuning import quiet_optuna  # noqa: E402
from ls_backend.scores import ScoresTable, TaskScores, read_scores  # noqa: E402
from ls_backend.stats import (  # noqa: E402
    PairedComparison,
    bootstrap_mean_difference_ci,
    relative_change,
    wilcoxon_paired,
)

DEFAULT_SCORES = "docs/benchmark/scores.jsonl.gz"
DEFAULT_TASKS = "docs/benchmark/tasks.yaml"
DEFAULT_OUT = "docs/results.md"
DEFAULT_FIGURES = "docs/figures"
DISCUSSION = REPO_ROOT / "docs" / "benchmark" / "discussion.md"
ALPHA = 0.05
WMV_CAL = "weighted majority (calibrated {cal})"
CASCADE_CAL = "cascade (calibrated {cal})"


@dataclass(frozen=True)
class Settings:
    """Everything that changes the numbers (all of it is written into the report)."""

    seed: int = 0
    shots: tuple[int, ...] = (10, 20, 50, 100)
    repeats: int = 20
    ace_bins: int = 10
    # The benchmark's binary tasks come in four families (spam, sentiment, question type, news topic); four
    # agglomerative clusters of their MiniLM description embeddings recover exactly these, while the runner's
    # default round(sqrt(12)) = 3 merges questions with news. Chosen from the descriptions, before any score.
    n_clusters: int | None = 4
    cascade_bins: tuple[int, ...] = (5, 10)
    cascade_calibrator: str = "ST"
    trials: int = 100
    inner_splits: int = 10
    eval_repeats: int = 5
    test_size: float = 0.2
    bootstrap_resamples: int = 2000
    noise_floor_draws: int = 20
    answer_repeats: int = 4
    quick: bool = False


QUICK = Settings(
    shots=(10, 30), repeats=2, trials=4, inner_splits=2, eval_repeats=2, bootstrap_resamples=200,
    noise_floor_draws=3, answer_repeats=2, quick=True,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------- inputs


def load_table(scores: Path, tasks: Path | None) -> tuple[ScoresTable, dict[str, str]]:
    """The scores table with descriptions from the tasks file (when there is one)."""
    descriptions: dict[str, str] = {}
    if tasks is not None:
        from ls_backend.tasks import load_tasks

        descriptions = {name: spec.description for name, spec in load_tasks(tasks).items()}
    table = read_scores(scores, descriptions)
    if not len(table):
        raise ValueError(f"{scores}: the scores file has no rows")
    if len(table.llms) < 2:
        raise ValueError(f"{scores}: needs at least 2 LLMs that scored every task, got {list(table.llms)}")
    return table, descriptions


def subtable(table: ScoresTable, names: Iterable[str]) -> ScoresTable:
    return ScoresTable({name: table[name] for name in names})


def task_embeddings(table: ScoresTable, path: Path | None) -> Mapping[str, np.ndarray] | Callable[..., Any]:
    """Description embeddings: from a JSON file ``{task: [floats]}`` if given, else the packaged MiniLM."""
    if path is not None:
        data = json.loads(path.read_text(encoding="utf-8"))
        missing = [t.name for t in table if t.name not in data]
        if missing:
            raise ValueError(f"{path}: no embedding for task(s) {missing}")
        return {t.name: np.asarray(data[t.name], dtype=np.float64) for t in table}
    from ls_backend.embeddings import embed_texts

    return embed_texts


# ------------------------------------------------------------------------------------------------- calibration


@dataclass
class CalibrationRun:
    experiment: CalibrationExperiment
    traces: dict[tuple[str, str, str], CellTrace] = field(default_factory=dict)


def run_calibration(
    table: ScoresTable, embeddings: Any, settings: Settings, progress: bool, keep_shots: int | None
) -> CalibrationRun:
    """The paper's calibration experiment; keeps the first repeat's items of the cells at ``keep_shots``."""
    config = ExperimentConfig(shots=settings.shots, repeats=settings.repeats, n_bins=settings.ace_bins,
                              n_clusters=settings.n_clusters, seed=settings.seed)  # fmt: skip
    traces: dict[tuple[str, str, str], CellTrace] = {}

    def keep(trace: CellTrace) -> None:
        scenario = Scenario.from_key(trace.scenario)
        if trace.repeat == 0 and scenario.shots == keep_shots:
            traces[trace.llm, trace.task, trace.scenario] = trace

    experiment = run_calibration_experiment(table, embeddings, config, progress=progress, on_cell=keep)
    return CalibrationRun(experiment, traces)


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
            f"{_short(key)} (pooled ACE {a1:.3f})": metrics.reliability_curve(s1, h, n_bins),
        }
    return curves, aces


def ace_noise_floor(table: ScoresTable, llms: Sequence[str], settings: Settings, n_heldout: int) -> float:
    """Mean ACE of a perfectly calibrated LLM with the real LLMs' uncalibrated score distributions, measured
    on ``n_heldout`` items as the in-task cells are: hits drawn as Bernoulli(score), seeded."""
    rng = np.random.default_rng([settings.seed, 7])
    values = []
    for task in table:
        labeled = task.labeled
        for llm in llms:
            li = task.llm_index(llm)
            scores = confidence.confidence_scores(task.logits[li, labeled], task.answers[li, labeled])
            for _ in range(settings.noise_floor_draws):
                drawn = rng.choice(scores, size=min(n_heldout, scores.size), replace=False)
                values.append(metrics.ace(drawn, rng.random(drawn.size) < drawn, settings.ace_bins))
    return float(np.mean(values))


@dataclass(frozen=True)
class AnswerCheck:
    """Per (LLM, task), means over draws on held-out items: the LLM's own answers against the argmax of an in-task
    vector-scaling calibrator fitted on ``shots`` uniformly drawn labeled items."""

    shots: int
    draws: int
    # metric -> llm -> task -> value; metrics: acc_raw, acc_sv, f1_raw, f1_sv
    values: dict[str, dict[str, dict[str, float]]]

    def mean(self, metric: str, llm: str) -> float:
        return float(np.mean(list(self.values[metric][llm].values())))

    def pairs(self, metric: str) -> np.ndarray:
        return np.array(
            [v for llm in sorted(self.values[metric]) for _, v in sorted(self.values[metric][llm].items())]
        )


def answer_check(table: ScoresTable, llms: Sequence[str], settings: Settings, shots: int) -> AnswerCheck:
    """Would answering with the calibrated argmax help? Vector scaling's per-class bias moves the decision
    threshold, which temperature scaling (the paper's score) never does."""
    from ls_backend.ensemble.classification import precision_recall_f1

    draws = max(1, settings.repeats // 4)
    values: dict[str, dict[str, dict[str, float]]] = {m: {llm: {} for llm in llms}
                                                      for m in ("acc_raw", "acc_sv", "f1_raw", "f1_sv")}  # fmt: skip
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


# ------------------------------------------------------------------------------------------------- cascades


def cascade_seed(seed: int, task: str, repeat: int) -> int:
    """Seed of one evaluation split: the same for both bin counts (paired), independent of the other tasks."""
    state = np.random.SeedSequence([seed, zlib.crc32(task.encode("utf-8")), repeat]).generate_state(1)[0]
    return int(state) % (2**31 - 1)


@dataclass(frozen=True)
class CascadeJob:
    task: str
    bins: int
    repeat: int
    seed: int
    logits: np.ndarray
    answers: np.ndarray
    costs: np.ndarray
    labels: np.ndarray
    llms: tuple[str, ...]
    positive_class: int | None
    settings: Settings


def run_cascade_job(job: CascadeJob) -> dict[str, Any]:
    """One evaluation split of Table 3 for one task and bin count (top level: it runs in worker processes)."""
    import contextlib

    from ls_backend.ensemble.report import cascade_table

    try:
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover
        limits = contextlib.nullcontext()
    with limits:
        result = cascade_table(
            job.logits, job.answers, job.costs, job.labels, llms=job.llms,
            calibrator=job.settings.cascade_calibrator, n_bins=job.bins, n_trials=job.settings.trials,
            n_splits=job.settings.inner_splits, n_eval_splits=1, test_size=job.settings.test_size, seed=job.seed,
            positive_class=job.positive_class, reference_llm=0,
            frontier=job.repeat == 0 and job.bins == max(job.settings.cascade_bins),
        )  # fmt: skip
    result.pop("policy", None)
    return {"task": job.task, "bins": job.bins, "repeat": job.repeat, **result}


def cascade_jobs(table: ScoresTable, llms: Sequence[str], settings: Settings) -> list[CascadeJob]:
    jobs = []
    for task in table:
        order = [task.llm_index(llm) for llm in llms]
        labeled = task.labeled
        positive = task.classes.index("yes") if len(task.classes) == 2 and "yes" in task.classes else None
        for repeat in range(settings.eval_repeats):
            for bins in settings.cascade_bins:
                jobs.append(
                    CascadeJob(
                        task=task.name, bins=bins, repeat=repeat, seed=cascade_seed(settings.seed, task.name, repeat),
                        logits=task.logits[order][:, labeled], answers=task.answers[order][:, labeled],
                        costs=task.costs[order][:, labeled], labels=task.labels[labeled], llms=tuple(llms),
                        positive_class=positive, settings=settings,
                    )
                )  # fmt: skip
    return jobs


def run_cascades(
    jobs: Sequence[CascadeJob], n_jobs: int, progress: bool
) -> dict[tuple[int, str, int], dict[str, Any]]:
    """Every job's result by (bins, task, repeat); the same results whatever ``n_jobs`` (each job is seeded)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="Table 3 (cascades)", unit="split", disable=not progress)
    results: dict[tuple[int, str, int], dict[str, Any]] = {}
    try:
        if n_jobs <= 1:
            for job in jobs:
                bar.set_postfix_str(f"{job.task} {job.bins} bins")
                result = run_cascade_job(job)
                results[job.bins, job.task, job.repeat] = result
                bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=n_jobs, mp_context=context, initializer=quiet_optuna
            ) as pool:
                for result in pool.map(run_cascade_job, jobs, chunksize=1):
                    results[result["bins"], result["task"], result["repeat"]] = result
                    bar.update(1)
    finally:
        bar.close()
    return results


@dataclass
class Table3:
    """Per bin count and method: per (task, repeat) values of each metric."""

    methods: list[str]
    values: dict[
        int, dict[str, dict[str, dict[str, list[float]]]]
    ]  # bins -> method -> metric -> task -> reps
    depth: dict[
        int, dict[str, dict[str, list[np.ndarray]]]
    ]  # bins -> method -> task -> depth fractions per repeat
    frontiers: dict[
        str, dict[str, Any]
    ]  # task -> {"frontier": [...], "rows": [...]} (largest bins, repeat 0)

    def pairs(self, bins: int, method: str, metric: str, tasks: Sequence[str]) -> np.ndarray:
        by_task = self.values[bins][method][metric]
        return np.array([v for t in tasks for v in by_task[t]], dtype=np.float64)

    def mean_depth(self, bins: int, method: str, tasks: Sequence[str]) -> np.ndarray | None:
        by_task = self.depth[bins][method]
        fractions = [d for t in tasks for d in by_task.get(t, [])]
        return np.mean(fractions, axis=0) if fractions else None

    def task_means(self, bins: int, method: str, metric: str, tasks: Sequence[str]) -> np.ndarray:
        by_task = self.values[bins][method][metric]
        return np.array([np.mean(by_task[t]) for t in tasks], dtype=np.float64)


def collect_table3(
    results: Mapping[tuple[int, str, int], dict[str, Any]], tasks: Sequence[str], settings: Settings
) -> Table3:
    first = results[settings.cascade_bins[0], tasks[0], 0]
    methods = [row["method"] for row in first["rows"]]
    metric_names = ("f1", "accuracy", "precision", "recall", "cost_per_item", "relative_cost")
    values: dict[int, dict[str, dict[str, dict[str, list[float]]]]] = {}
    depth: dict[int, dict[str, dict[str, list[np.ndarray]]]] = {}
    for bins in settings.cascade_bins:
        values[bins] = {m: {k: {t: [] for t in tasks} for k in metric_names} for m in methods}
        depth[bins] = {m: {} for m in methods}
        for task in tasks:
            for repeat in range(settings.eval_repeats):
                for row in results[bins, task, repeat]["rows"]:
                    for k in metric_names:
                        values[bins][row["method"]][k][task].append(float(row[k]))
                    if "depth_fractions" in row:
                        depth[bins][row["method"]].setdefault(task, []).append(
                            np.asarray(row["depth_fractions"])
                        )
    top = max(settings.cascade_bins)
    frontiers = {t: results[top, t, 0] for t in tasks}
    return Table3(methods, values, depth, frontiers)


# ------------------------------------------------------------------------------------------------- claims


@dataclass
class Comparison:
    """A paired comparison ``a`` vs ``b`` (lower is better for ACE, higher for F1), with its evidence."""

    name: str
    a_label: str
    b_label: str
    a: np.ndarray
    b: np.ndarray
    test: PairedComparison
    ci: tuple[float, float]
    unit: str  # what one pair is
    coarse: PairedComparison | None = None  # the same comparison on per-task means
    coarse_unit: str = ""

    @property
    def relative(self) -> float:
        return relative_change(float(self.a.mean()), float(self.b.mean()))


def compare(
    name: str, a_label: str, b_label: str, a: np.ndarray, b: np.ndarray, unit: str, settings: Settings,
    coarse: tuple[np.ndarray, np.ndarray, str] | None = None,
) -> Comparison:  # fmt: skip
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    test = wilcoxon_paired(a, b)
    ci = bootstrap_mean_difference_ci(a, b, n_resamples=settings.bootstrap_resamples, seed=settings.seed)
    coarse_test, coarse_unit = None, ""
    if coarse is not None:
        ca, cb, coarse_unit = coarse
        ok = np.isfinite(ca) & np.isfinite(cb)
        coarse_test = wilcoxon_paired(ca[ok], cb[ok])
    return Comparison(name, a_label, b_label, a, b, test, ci, unit, coarse_test, coarse_unit)


def verdict(comparison: Comparison, want_lower: bool) -> str:
    """ "holds" when ``a`` moves the claimed way with p < ALPHA, and so do the coarser pairs' means (per-task means:
    repeats of one task are not independent evidence) where there are any; else what the tests say."""
    right_way = comparison.test.mean_difference < 0 if want_lower else comparison.test.mean_difference > 0
    significant = comparison.test.p_value < ALPHA
    coarse = comparison.coarse
    if right_way and significant and coarse is not None:
        coarse_right_way = coarse.mean_difference < 0 if want_lower else coarse.mean_difference > 0
        if not (coarse_right_way and coarse.p_value < ALPHA):
            return "same direction; significant over repeats, not over per-task means"
    if right_way and significant:
        return "holds"
    if right_way:
        return "same direction, not significant"
    if significant:
        return "does not hold (significantly the other way)"
    return "does not hold (no significant difference)"


def in_task_pairs(
    experiment: CalibrationExperiment, sampler: str, baseline: str, shots: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ACE pairs (task x repeat) of ``sampler`` vs ``baseline`` over LLMs, shots and calibrators, and the same
    averaged per (LLM, task)."""
    a, b = [], []
    per_task: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    calibrators = experiment.config["calibrators"]
    for llm in experiment.llms:
        for k in shots or experiment.config["shots"]:
            for cal in calibrators:
                ours = experiment.values[llm].get(Scenario("in-task", cal, k, sampler).key, {})
                theirs = experiment.values[llm].get(Scenario("in-task", cal, k, baseline).key, {})
                for task in experiment.tasks:
                    if task in ours and task in theirs:
                        n = min(len(ours[task]), len(theirs[task]))
                        a += ours[task][:n]
                        b += theirs[task][:n]
                        entry = per_task.setdefault((llm, task), ([], []))
                        entry[0].extend(ours[task][:n])
                        entry[1].extend(theirs[task][:n])
    ca = np.array([np.mean(v[0]) for _, v in sorted(per_task.items())])
    cb = np.array([np.mean(v[1]) for _, v in sorted(per_task.items())])
    return np.array(a), np.array(b), ca, cb


def scenario_task_pairs(experiment: CalibrationExperiment, a_key: Callable[[str], str | None],
                        b_key: Callable[[str], str | None]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per (LLM, task) means of two scenarios (the scenario keys may depend on the LLM)."""
    a, b = [], []
    for llm in experiment.llms:
        ka, kb = a_key(llm), b_key(llm)
        if ka is None or kb is None:
            continue
        ours, theirs = experiment.per_task(llm, ka), experiment.per_task(llm, kb)
        for task in experiment.tasks:
            if task in ours and task in theirs:
                a.append(ours[task])
                b.append(theirs[task])
    return np.array(a), np.array(b)


# ------------------------------------------------------------------------------------------------- formatting


def _short(key: str) -> str:
    scenario = Scenario.from_key(key)
    if scenario.setting == "in-task":
        return f"{scenario.sampler}/{scenario.calibrator}, {scenario.shots} shots"
    return key


# ------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """Everything the markdown is rendered from."""

    settings: Settings
    scores_path: str
    scores_sha256: str
    command: str
    table: ScoresTable
    llms: tuple[str, ...]
    binary: list[str]
    multiclass: list[str]
    calib: CalibrationRun
    calib_multi: CalibrationRun | None
    table3: Table3
    claims: list[
        tuple[str, str, str, Comparison | None, str, str]
    ]  # id, claim, paper, comparison, ours, verdict
    comparisons: list[Comparison]
    best_at_max: dict[str, str]
    pooled_aces: dict[str, tuple[float, float]]
    noise_floor: float
    answers: AnswerCheck | None
    figures: dict[str, str]
    provenance: dict[str, Any] | None
    discussion: str
    diagnostics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # binary_diagnostics
    costs_path: str | None = None
    costs_sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    prompt_study: dict[str, Any] | None = None
    answer_study_md: str | None = None
    answer_headline: dict[str, float] = field(default_factory=dict)


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


def binary_diagnostics(
    table: ScoresTable, binary: Sequence[str], llms: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Per LLM, per binary task (in ``binary`` order): accuracy, logit-margin AUC and share of yes answers."""
    tasks = [table[name] for name in binary]
    return {
        llm: {
            "accuracy": np.array([accuracy(t, t.llm_index(llm)) for t in tasks]),
            "auc": np.array([margin_auc(t, t.llm_index(llm)) for t in tasks]),
            "yes_rate": np.array([positive_rate(t, t.llm_index(llm)) for t in tasks]),
        }
        for llm in llms
    }


def build_claims(report_parts: dict[str, Any], settings: Settings) -> tuple[list[Any], list[Comparison]]:
    experiment: CalibrationExperiment = report_parts["experiment"]
    table3: Table3 = report_parts["table3"]
    binary: list[str] = report_parts["binary"]
    best_at_max: dict[str, str] = report_parts["best_at_max"]
    max_shots = max(settings.shots)
    claims: list[Any] = []
    comparisons: list[Comparison] = []

    # Claim 1: in-task calibration with the most shots (the paper: 100) lowers ACE by 46%.
    a, b = scenario_task_pairs(experiment, lambda llm: best_at_max.get(llm), lambda llm: UNCALIBRATED)
    if a.size:
        c1 = compare(f"best in-task method at {max_shots} shots vs uncalibrated (Table 2)", "calibrated",
                     "uncalibrated", a, b, "(LLM, task) mean over repeats", settings)  # fmt: skip
        comparisons.append(c1)
        claims.append(("1", f"Calibration with {max_shots} labeled in-task items lowers ACE",
                       "-46% (100 shots)", c1, f"{pct(c1.relative)} mean ACE ({fmt(c1.b.mean())} -> {fmt(c1.a.mean())})",
                       verdict(c1, want_lower=True)))  # fmt: skip
    else:
        claims.append(
            ("1", "Calibration lowers ACE", "-46% (100 shots)", None, "not measured", "not measured")
        )

    # Claim 2: SE and IE sampling beat uniform sampling by about 10%.
    for sampler in ("SE", "IE"):
        a, b, ca, cb = in_task_pairs(experiment, sampler, "U")
        if not a.size:
            claims.append(("2", f"{sampler} beats U", "~-10%", None, "not measured", "not measured"))
            continue
        c2 = compare(f"{sampler} vs U (all shots, ST and SV)", sampler, "U", a, b,
                     "(LLM, task, shots, calibrator, repeat)", settings,
                     coarse=(ca, cb, "(LLM, task) mean over shots, calibrators, repeats"))  # fmt: skip
        comparisons.append(c2)
        claims.append(("2", f"In-task sampling {sampler} gives lower ACE than uniform sampling U", "~-10%", c2,
                       f"{pct(c2.relative)} mean ACE ({fmt(c2.b.mean())} -> {fmt(c2.a.mean())})",
                       verdict(c2, want_lower=True)))  # fmt: skip

    # Claim 3: the calibrated cascade is more accurate than weighted majority vote at < 1/2 of its cost.
    cal = settings.cascade_calibrator
    cascade, wmv = CASCADE_CAL.format(cal=cal), WMV_CAL.format(cal=cal)
    for bins in sorted(settings.cascade_bins, reverse=True):
        a = table3.pairs(bins, cascade, "f1", binary)
        b = table3.pairs(bins, wmv, "f1", binary)
        c3 = compare(f"F1, {cascade} vs {wmv}, {bins} bins", "cascade", "weighted majority", a, b,
                     "(task, evaluation split)", settings,
                     coarse=(table3.task_means(bins, cascade, "f1", binary), table3.task_means(bins, wmv, "f1", binary),
                             "task mean over splits"))  # fmt: skip
        comparisons.append(c3)
        cost_ratio = float(
            table3.pairs(bins, cascade, "cost_per_item", binary).mean()
            / table3.pairs(bins, wmv, "cost_per_item", binary).mean()
        )
        f1_holds = verdict(c3, want_lower=False) == "holds"
        cheap = cost_ratio < 0.5
        f1_text = (
            "F1 significantly higher"
            if f1_holds
            else "F1 significantly lower"
            if c3.test.p_value < ALPHA
            else "F1 not significantly different"
        )
        cost_text = f"cost {'<' if cheap else '>='} 0.50x"
        overall = "holds" if f1_holds and cheap else "partly holds" if f1_holds or cheap else "does not hold"
        overall = f"{overall} ({f1_text}; {cost_text})"
        claims.append(("3", f"The calibrated cascade ({bins} bins) is more accurate than weighted majority vote "
                       "at less than half its cost", "higher F1 at < 0.50x cost", c3,
                       f"F1 {fmt(c3.a.mean(), 3)} vs {fmt(c3.b.mean(), 3)} ({c3.test.mean_difference:+.3f}) "
                       f"at {cost_ratio:.2f}x its cost", overall))  # fmt: skip

    # Supporting comparisons (not headline claims).
    for setting_a, setting_b in (("SIM-OOT", "ALL-OOT"),):
        for cal_name in experiment.config["calibrators"]:
            ka, kb = f"{setting_a}/{cal_name}", f"{setting_b}/{cal_name}"
            if ka in experiment.scenarios and kb in experiment.scenarios:
                a, b = scenario_task_pairs(experiment, lambda llm, k=ka: k, lambda llm, k=kb: k)  # type: ignore[misc]
                if a.size:
                    comparisons.append(compare(f"ACE, {ka} vs {kb}", ka, kb, a, b, "(LLM, task)", settings))
    for cal_name in experiment.config["calibrators"]:
        ka = f"SIM-OOT/{cal_name}" if f"SIM-OOT/{cal_name}" in experiment.scenarios else f"ALL-OOT/{cal_name}"
        if ka in experiment.scenarios:
            a, b = scenario_task_pairs(experiment, lambda llm, k=ka: k, lambda llm: UNCALIBRATED)  # type: ignore[misc]
            if a.size:
                comparisons.append(
                    compare(f"ACE, {ka} vs uncalibrated", ka, "uncalibrated", a, b, "(LLM, task)", settings)
                )
    bins = max(settings.cascade_bins)
    a = table3.pairs(bins, cascade, "f1", binary)
    b = table3.pairs(bins, "cascade (uncalibrated)", "f1", binary)
    comparisons.append(compare(f"F1, {cascade} vs cascade (uncalibrated), {bins} bins", "calibrated", "uncalibrated",
                               a, b, "(task, evaluation split)", settings))  # fmt: skip
    wmv = WMV_CAL.format(cal=settings.cascade_calibrator)
    comparisons.append(compare(f"accuracy, {cascade} vs {wmv}, {bins} bins", "cascade", "weighted majority",
                               table3.pairs(bins, cascade, "accuracy", binary),
                               table3.pairs(bins, wmv, "accuracy", binary), "(task, evaluation split)",
                               settings))  # fmt: skip
    return claims, comparisons


def render(report: Report) -> str:
    s = report.settings
    experiment = report.calib.experiment
    llms = report.llms
    cheapest = llms[0]
    cal = s.cascade_calibrator
    out: list[str] = []
    add = out.append

    add("# Reproduction of the paper's Tables 1, 2, 3 and 5 on the public benchmark")
    add("")
    add("<!-- Generated by scripts/reproduce_paper.py. Do not edit by hand: rerun the command below. -->")
    add("")
    add(f"Command: `{report.command}`  ")
    add(f"Scores: `{report.scores_path}` (sha256 `{report.scores_sha256}`), {len(report.table)} tasks "
        f"({len(report.binary)} binary, {len(report.multiclass)} multi-class), {len(llms)} LLMs: "
        + ", ".join(f"`{m}`" for m in llms) + ".")  # fmt: skip
    if s.quick:
        add("")
        add("**Quick mode**: reduced repeats, shots and tuning trials; for smoke tests, not for conclusions.")
    add("")

    add("## Headline")
    add("")
    add("The paper's three headline claims, with our number and a paired Wilcoxon signed-rank test "
        f"(two-sided, alpha = {ALPHA}); details under [Claims](#claims).")  # fmt: skip
    add("")
    for cid, claim, paper, comparison, ours, result in report.claims:
        evidence = (
            ""
            if comparison is None
            else f"; p {pval(comparison.test.p_value)}, {comparison.test.n_pairs} pairs"
        )
        add(f"- **Claim {cid}**: {claim}. Paper: {paper}. Ours: {ours}{evidence}. **{result}**.")
    add("")
    for line in _answer_headline(report):
        add(line)
    if report.answer_headline:
        add("")

    add("## Benchmark")
    add("")
    if report.costs_path:
        add(f"Cost of an LLM = its mean seconds per item measured on a quiet machine, every LLM on the same items, "
            f"interleaved (`{report.costs_path}`, sha256 `{report.costs_sha256}`, written by "
            "`scripts/measure_costs.py`; per task, so longer texts cost more); relative cost = that divided by the "
            f"cheapest LLM's (`{cheapest}`).")  # fmt: skip
    else:
        add("Cost of an LLM = its measured mean seconds per item in the scores table (`cost` column); relative "
            f"cost = that divided by the cheapest LLM's (`{cheapest}`).")  # fmt: skip
    add("")
    mean_cost = {
        m: float(np.mean(np.concatenate([t.costs[t.llm_index(m)] for t in report.table]))) for m in llms
    }
    rows = []
    for m in llms:
        acc_m = [accuracy(report.table[t], report.table[t].llm_index(m)) for t in report.multiclass]
        d = report.diagnostics[m]
        rows.append([f"`{m}`", fmt(mean_cost[m]), f"{mean_cost[m] / mean_cost[cheapest]:.2f}x",
                     fmt(float(d["accuracy"].mean()), 3), fmt(float(np.nanmean(d["auc"])), 3),
                     fmt(float(d["yes_rate"].mean()), 3),
                     fmt(float(np.mean(acc_m)), 3) if acc_m else "-"])  # fmt: skip
    add(markdown_table(["LLM", "seconds / item", "relative cost", "accuracy (binary, mean)",
                        "AUC (binary, mean)", "answers 'yes' (binary, mean)", "accuracy (multi-class, mean)"],
                       rows))  # fmt: skip
    add("")
    binary_tasks = [report.table[t] for t in report.binary]
    labeled_yes = float(np.mean([np.mean(t.labels[t.labeled] == positive_index(t)) for t in binary_tasks]))
    add("Accuracy scores the LLM's answer; AUC scores how its logit margin (yes minus no) ranks the items whatever "
        "the threshold (0.5 = no better than chance, below 0.5 = inverted); `answers 'yes'` is the share of items "
        f"the LLM answered yes (an unbiased LLM would come near the share of labeled items that are yes: "
        f"{labeled_yes:.3f} on average). Per task: accuracy / AUC (binary) or accuracy (multi-class).")  # fmt: skip
    add("")
    rows = []
    for t in report.table:
        cells = [
            f"{fmt(accuracy(t, t.llm_index(m)), 3)} / {fmt(margin_auc(t, t.llm_index(m)), 3)}"
            if len(t.classes) == 2
            else fmt(accuracy(t, t.llm_index(m)), 3)
            for m in llms
        ]
        rows.append([t.name, str(len(t.classes)), str(t.n_items), str(int(t.labeled.sum())), *cells])
    add(markdown_table(["task", "classes", "items", "labeled", *(f"{m}" for m in llms)], rows))
    add("")
    if report.provenance:
        add(_provenance_section(report.provenance))
        add("")
    if report.prompt_study is not None:
        from ls_backend.benchmark.prompt_study import FORMER_DEFAULTS, study_markdown

        add("## Prompts: the prompt study")
        add("")
        add(study_markdown(report.prompt_study, FORMER_DEFAULTS).rstrip())
        add("")
    if report.answer_study_md is not None:
        add("## Answer quality: what the product serves, before and with in-task labels")
        add("")
        add(report.answer_study_md.rstrip())
        add("")

    add("## Settings")
    add("")
    n_tunings = len(report.table) * s.eval_repeats * len(s.cascade_bins) * 2
    add(markdown_table(["setting", "value"], [
        ["seed", str(s.seed)],
        ["ACE bins (equal mass)", str(s.ace_bins)],
        ["in-task shots", ", ".join(map(str, s.shots))],
        ["in-task repeats per cell (independent draws)", str(s.repeats)],
        ["out-of-task sources", "binary tasks only (a calibrator's parameters are per class position)"],
        ["SIM-OOT clusters", _clusters_text(experiment)],
        ["Table 3 evaluation splits per task (random 80/20)", str(s.eval_repeats)],
        ["Table 3 bins per LLM", ", ".join(map(str, s.cascade_bins))],
        ["Optuna trials per tuning (TPE, multivariate, seeded)", str(s.trials)],
        ["inner 80/20 splits per trial", str(s.inner_splits)],
        ["tunings run (tasks x splits x bin counts x {uncal., cal.})", str(n_tunings)],
        ["Table 3 calibrator", cal],
        ["F1", "binary tasks: of class 'yes'; multi-class: macro"],
        ["bootstrap resamples (95% CI)", str(s.bootstrap_resamples)],
    ], right=[False, False]))  # fmt: skip
    add("")

    add("## Table 1: uncalibrated vs out-of-task calibration (binary tasks)")
    add("")
    add(f"ACE per task (in-task cells: mean over {s.repeats} repeats), summarized across the {len(report.binary)} "
        "binary tasks: n, mean, std, median, IQR, upper quartile (q75).")  # fmt: skip
    add("")
    add(experiment.table1())
    add("")
    add("## Table 2: best in-task method per shot count (binary tasks)")
    add("")
    add("The sampler/calibrator with the lowest mean ACE across tasks at each shot count; `uncal. mean` is the "
        "uncalibrated ACE on the same tasks.")  # fmt: skip
    add("")
    add(experiment.table2())
    add("")
    add("## Table 5: every shots x sampler x calibrator cell (binary tasks)")
    add("")
    add(experiment.table5())
    add("")
    add(_per_task_ace_section(report))
    add("")
    if report.calib_multi is not None:
        add(_multiclass_section(report))
        add("")

    if report.answers is not None and report.answers.values["acc_raw"][llms[0]]:
        add(_answers_section(report))
        add("")
    add("## Table 3: single LLMs, votes and cascades")
    add("")
    add(f"Mean over the {len(report.binary)} binary tasks x {s.eval_repeats} evaluation splits; `F1 std` is the "
        "spread over those (task, split) pairs. Cost relative to the cheapest LLM on the same test items. "
        "`stops at LLM 1/2/3`: share of test items the cascade answered after asking 1, 2, 3 LLMs.")  # fmt: skip
    for bins in s.cascade_bins:
        add("")
        add(f"### {bins} bins per LLM")
        add("")
        add(_table3_markdown(report, bins, report.binary))
    if report.multiclass:
        add("")
        add(f"### Multi-class tasks ({', '.join(report.multiclass)}), macro F1, {max(s.cascade_bins)} bins")
        add("")
        add(_table3_markdown(report, max(s.cascade_bins), report.multiclass))
    add("")
    add(f"### F1 per task ({max(s.cascade_bins)} bins, mean over splits)")
    add("")
    add(_table3_per_task(report, max(s.cascade_bins)))
    add("")

    add("## Figures")
    add("")
    for caption, link in report.figures.items():
        add(f"**{caption}**")
        add("")
        add(f"![{caption}]({link})")
        add("")

    add("## Claims")
    add("")
    header = [
        "#",
        "claim",
        "paper",
        "ours",
        "pairs",
        "Wilcoxon p",
        "95% CI of mean diff.",
        "p (coarser pairs)",
        "verdict",
    ]
    rows = []
    for cid, claim, paper, comparison, ours, result in report.claims:
        if comparison is None:
            rows.append([cid, claim, paper, ours, "-", "-", "-", "-", result])
            continue
        coarse = (
            "-"
            if comparison.coarse is None
            else f"{pval(comparison.coarse.p_value)} (n={comparison.coarse.n_pairs})"
        )
        rows.append([cid, claim, paper, ours, str(comparison.test.n_pairs), pval(comparison.test.p_value),
                     f"[{comparison.ci[0]:+.4f}, {comparison.ci[1]:+.4f}]", coarse, result])  # fmt: skip
    add(markdown_table(header, rows, right=[False, False, False, False, True, True, False, False, False]))
    add("")
    add(f"A claim **holds** when the paired difference goes the claimed way with p < {ALPHA}, and so does the test "
        "on the coarser pairs where there is one (repeats of one task are not independent evidence). Pairs of claim 1: "
        "(LLM, task), each the task's mean ACE over repeats against its uncalibrated ACE. Claim 2: (LLM, task, "
        "shots, calibrator, repeat); `p (coarser pairs)` repeats the test on (LLM, task) means, which does not "
        "treat repeats of one task as independent. Claim 3: (task, evaluation split), binary tasks; the cost "
        "ratio is the cascade's mean cost per item over weighted majority vote's.")  # fmt: skip
    add("")

    add("## Paired statistics")
    add("")
    rows = []
    for c in report.comparisons:
        rows.append([c.name, c.unit, str(c.test.n_pairs), fmt(float(c.a.mean())), fmt(float(c.b.mean())),
                     pct(c.relative), f"{c.test.median_difference:+.4f}", f"{c.test.fraction_a_lower:.3f}",
                     pval(c.test.p_value), f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"])  # fmt: skip
    add(markdown_table(["comparison (a vs b)", "pair", "n", "mean a", "mean b", "relative", "median a-b",
                        "share a<b", "p", "95% CI a-b"], rows,
                       right=[False, False, True, True, True, True, True, True, True, False]))  # fmt: skip
    add("")
    add(_by_shots_section(report))
    add("")

    add("## Discussion")
    add("")
    add("### Generated from the numbers above")
    add("")
    add(_generated_discussion(report))
    add("")
    add("### Notes of the authors of this reproduction")
    add("")
    add(report.discussion.strip())
    add("")

    skipped = experiment.skipped + (report.calib_multi.experiment.skipped if report.calib_multi else [])
    if skipped or experiment.notes or report.notes:
        add("## Skipped cells and notes")
        add("")
        reasons: dict[str, int] = {}
        for entry in skipped:
            reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
        for reason, count in sorted(reasons.items()):
            add(f"- {count} cell(s) skipped: {reason}")
        fallbacks = {t: v["fallback"] for t, v in sorted(experiment.sources.items()) if v.get("fallback")}
        for task, why in fallbacks.items():
            add(f"- SIM-OOT fallback for {task}: {why}")
        for note in [*experiment.notes, *report.notes]:
            add(f"- {note}")
        add("")
    return "\n".join(out).rstrip() + "\n"


def _answer_headline(report: Report) -> list[str]:
    """The answer-quality headline: the served cascade's accuracy over the balanced binary tasks before any label
    and with 50, its cost, the natural-ratio F1 of yes, the best single LLM and the supervised anchor."""
    h = report.answer_headline
    if not h:
        return []
    natural = (
        f"; F1 of yes on the natural-ratio tasks {h['served_natural_f1_0']:.3f} (paper's method: "
        f"{h['paper_natural_f1_0']:.3f})"
        if math.isfinite(h["served_natural_f1_0"])
        else ""
    )
    lines = [
        f"- **Answers before any in-task label**: the served cascade's mean accuracy over the {len(report.binary)} "
        f"balanced binary tasks is {h['served_accuracy_0']:.3f} (the paper's method as the product ran it: "
        f"{h['paper_accuracy_0']:.3f}) at {h['served_cost_ratio_0']:.2f}x the cost of asking all three LLMs"
        f"{natural}."
    ]
    if "served_accuracy_50" in h:
        anchor = h.get("anchor_accuracy_50", float("nan"))
        anchor_text = (
            f"; logistic regression on MiniLM embeddings of the same 50 labels {anchor:.3f}"
            if math.isfinite(anchor)
            else ""
        )
        lines.append(
            f"- **Answers with 50 in-task labels**: {h['served_accuracy_50']:.3f} at {h['served_cost_ratio_50']:.2f}x "
            f"the cost of all three (best single LLM {h['best_single_accuracy_50']:.3f}{anchor_text})."
        )
    return lines


def _clusters_text(experiment: CalibrationExperiment) -> str:
    clusters: dict[int, list[str]] = {}
    for task, entry in experiment.sources.items():
        if entry.get("cluster") is not None:
            clusters.setdefault(int(entry["cluster"]), []).append(task)
    if not clusters:
        return "none (no description embeddings)"
    groups = "; ".join(
        ", ".join(sorted(members)) for members in sorted(clusters.values(), key=lambda m: sorted(m))
    )
    return f"{len(clusters)} ({experiment.config['cluster_method']} on description embeddings): {groups}"


def _provenance_section(provenance: Mapping[str, Any]) -> str:
    lines = ["### Provenance of the scores", ""]
    if provenance.get("command"):
        lines.append(f"Scored with `{provenance['command']}`.")
        lines.append("")
    rows = []
    for llm in provenance.get("llms", []):
        rows.append([f"`{llm.get('name', '')}`", str(llm.get("model", "")), f"`{str(llm.get('sha256') or '-')[:16]}`",
                     fmt(llm.get("mean_seconds_per_item")), str(llm.get("items", "-"))])  # fmt: skip
    if rows:
        lines.append(markdown_table(["LLM", "model", "sha256 (first 16)", "mean s / item", "items"], rows,
                                    right=[False, False, False, True, True]))  # fmt: skip
        lines.append("")
    versions = provenance.get("package_versions") or {}
    if versions:
        lines.append("Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".")
        lines.append("")
    machine = provenance.get("machine") or {}
    if machine:
        lines.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in sorted(machine.items())) + ".")
    if provenance.get("wall_seconds") is not None:
        lines.append(f"Wall time of the scoring run: {float(provenance['wall_seconds']):.0f} s "
                     "(the last run; a resumed run counts only its own part).")  # fmt: skip
    return "\n".join(lines).rstrip()


def _answers_section(report: Report) -> str:
    check = report.answers
    assert check is not None
    rows = [[f"`{m}`", fmt(check.mean("acc_raw", m), 3), fmt(check.mean("acc_sv", m), 3),
             fmt(check.mean("f1_raw", m), 3), fmt(check.mean("f1_sv", m), 3)] for m in report.llms]  # fmt: skip
    lines = [
        "## Beyond the paper: answering with the calibrated argmax (binary tasks)",
        "",
        "The paper keeps the answer the LLM gave and calibrates its score. Temperature scaling never changes which "
        "class has the larger logit, so a biased LLM keeps its bias. Here, per task and LLM, vector scaling (a "
        f"per-class bias) is fitted on {check.shots} uniformly drawn labeled items and the class it makes most "
        f"probable is the answer, measured on the other labeled items against the LLM's own answers "
        f"({check.draws} draws, means over draws, then over tasks; paired tests under "
        "[Paired statistics](#paired-statistics)). Not used by any table above.",
        "",
        markdown_table(
            ["LLM", "accuracy, own answer", "accuracy, SV argmax", "F1, own answer", "F1, SV argmax"], rows
        ),
    ]
    return "\n".join(lines)


def _per_task_ace_section(report: Report) -> str:
    experiment = report.calib.experiment
    max_shots = max(report.settings.shots)
    lines = [
        f"### ACE per task: uncalibrated -> best in-task at {max_shots} shots (Table 2's choice per LLM)",
        "",
    ]
    rows = []
    for task in report.binary:
        row = [task]
        for llm in report.llms:
            before = experiment.per_task(llm, UNCALIBRATED).get(task)
            key = report.best_at_max.get(llm)
            after = experiment.per_task(llm, key).get(task) if key else None
            row.append(f"{fmt(before)} -> {fmt(after)}")
        rows.append(row)
    lines.append(markdown_table(["task", *report.llms], rows, right=[False] + [True] * len(report.llms)))
    return "\n".join(lines)


def _multiclass_section(report: Report) -> str:
    assert report.calib_multi is not None
    experiment = report.calib_multi.experiment
    lines = ["## Multi-class tasks: in-task calibration", "",
             "No other task shares their class list, so there is no out-of-task calibration and no surrogate error "
             f"for SE/IE: uncalibrated vs in-task U (mean over {report.settings.repeats} repeats).", ""]  # fmt: skip
    keys = [k for k in experiment.scenarios if k == UNCALIBRATED or Scenario.from_key(k).sampler == "U"]
    rows = []
    for task in experiment.tasks:
        for llm in experiment.llms:
            rows.append([task, f"`{llm}`", *(fmt(experiment.per_task(llm, k).get(task)) for k in keys)])
    lines.append(markdown_table(["task", "LLM", *(_short(k) if k != UNCALIBRATED else k for k in keys)], rows,
                                right=[False, False] + [True] * len(keys)))  # fmt: skip
    return "\n".join(lines)


def _table3_markdown(report: Report, bins: int, tasks: Sequence[str]) -> str:
    t3 = report.table3
    rows = []
    for method in t3.methods:
        f1 = t3.pairs(bins, method, "f1", tasks)
        fractions = t3.mean_depth(bins, method, tasks)
        depth_text = "-" if fractions is None else " / ".join(f"{x:.2f}" for x in fractions)
        rows.append([method, fmt(float(f1.mean()), 3), fmt(float(f1.std(ddof=1)) if f1.size > 1 else None, 3),
                     fmt(float(t3.pairs(bins, method, "accuracy", tasks).mean()), 3),
                     fmt(float(t3.pairs(bins, method, "precision", tasks).mean()), 3),
                     fmt(float(t3.pairs(bins, method, "recall", tasks).mean()), 3),
                     fmt(float(t3.pairs(bins, method, "cost_per_item", tasks).mean())),
                     f"{float(t3.pairs(bins, method, 'relative_cost', tasks).mean()):.2f}x", depth_text])  # fmt: skip
    return markdown_table(["method", "F1", "F1 std", "accuracy", "precision", "recall", "seconds / item", "cost vs cheapest",
                           "stops at LLM 1/2/3"], rows)  # fmt: skip


def _table3_per_task(report: Report, bins: int) -> str:
    t3 = report.table3
    short = {m: m.replace("weighted majority", "WMV").replace("(calibrated ", "(").replace("(uncalibrated)", "(uncal.)")
             for m in t3.methods}  # fmt: skip
    rows = []
    for task in report.binary + report.multiclass:
        rows.append([task, *(fmt(float(np.mean(t3.values[bins][m]["f1"][task])), 3) for m in t3.methods)])
    return markdown_table(["task", *(short[m] for m in t3.methods)], rows)


def _by_shots_section(report: Report) -> str:
    experiment = report.calib.experiment
    lines = ["### SE and IE vs U by shot count (pairs: LLM, task, calibrator, repeat)", ""]
    rows = []
    for k in sorted(report.settings.shots):
        for sampler in ("SE", "IE"):
            a, b, _, _ = in_task_pairs(experiment, sampler, "U", shots=[k])
            if not a.size:
                continue
            test = wilcoxon_paired(a, b)
            rows.append([str(k), sampler, str(test.n_pairs), fmt(float(a.mean())), fmt(float(b.mean())),
                         pct(relative_change(float(a.mean()), float(b.mean()))), f"{test.fraction_a_lower:.3f}",
                         pval(test.p_value)])  # fmt: skip
    lines.append(markdown_table(["shots", "sampler", "n", "mean ACE sampler", "mean ACE U", "relative",
                                 "share lower", "p"], rows, right=[True, False, True, True, True, True, True, True]))  # fmt: skip
    return "\n".join(lines)


def _generated_discussion(report: Report) -> str:
    """Sentences built from the computed values only (no number is typed by hand here)."""
    s = report.settings
    t3 = report.table3
    experiment = report.calib.experiment
    lines = []
    agree = [f"claim {cid} ({claim})" for cid, claim, _, _, _, v in report.claims if v.startswith("holds")]
    differ = [
        f"claim {cid} ({claim}: {v})" for cid, claim, _, _, _, v in report.claims if not v.startswith("holds")
    ]
    lines.append(
        f"- Where we agree with the paper: {'; '.join(agree) if agree else 'none of the three claims'}."
    )
    lines.append(f"- Where we do not: {'; '.join(differ) if differ else 'none'}.")
    for cid, _, paper, comparison, _ours, _ in report.claims:
        if comparison is not None and cid in ("1", "2"):
            lines.append(f"- Size, claim {cid} ({comparison.a_label} vs {comparison.b_label}): ours {pct(comparison.relative)}, "
                         f"the paper's {paper}.")  # fmt: skip
    # Evidence: how good and how miscalibrated each LLM is, what the cost structure allows.
    for llm in report.llms:
        d = report.diagnostics[llm]
        acc, aucs, yes_rate = float(d["accuracy"].mean()), d["auc"], float(d["yes_rate"].mean())
        uncal = experiment.summary(llm, UNCALIBRATED)
        pooled = report.pooled_aces.get(llm)
        text = (f"- `{llm}`: mean accuracy {acc:.3f} on the binary tasks, answering yes to {yes_rate:.3f} of the "
                f"items; its yes-minus-no logit margin ranks them with mean AUC {float(np.nanmean(aucs)):.3f} "
                f"(AUC >= 0.7 on {int(np.sum(aucs >= 0.7))} of {aucs.size} tasks, < 0.5 on "
                f"{int(np.sum(aucs < 0.5))})")  # fmt: skip
        if uncal is not None:
            text += f", mean uncalibrated ACE {uncal['mean']:.4f}"
        if pooled is not None:
            text += f"; pooled over tasks, its best in-task calibration moves ACE from {pooled[0]:.4f} to {pooled[1]:.4f}"
        lines.append(text + ".")
    lines.append(f"- ACE has a noise floor: a perfectly calibrated LLM with these score distributions, measured "
                 f"on as many held-out items as the in-task cells use, shows a mean ACE of {report.noise_floor:.4f} "
                 f"({s.ace_bins} bins). Calibrated values near it cannot improve further; reductions relative to the "
                 "uncalibrated ACE are bounded by it.")  # fmt: skip
    costs = {
        m: float(np.mean(np.concatenate([t.costs[t.llm_index(m)] for t in report.table])))
        for m in report.llms
    }
    total = sum(costs.values())
    ratios = " : ".join(f"{costs[m] / costs[report.llms[0]]:.2f}" for m in report.llms)
    floor_ratio = costs[report.llms[0]] / total
    room = (
        "so a cascade can be under half of its cost only by stopping early on most items"
        if floor_ratio < 0.5
        else "so no cascade can cost less than half of it: the cost part of claim 3 is out of reach here"
    )
    lines.append(f"- Cost structure: the LLMs cost {ratios} (cheapest first). Weighted majority vote asks all of "
                 f"them and costs {total / costs[report.llms[0]]:.2f}x the cheapest LLM; a cascade that always stops "
                 f"at the cheapest LLM costs {floor_ratio:.2f}x weighted majority vote, {room}.")  # fmt: skip
    bins = max(s.cascade_bins)
    cascade = CASCADE_CAL.format(cal=s.cascade_calibrator)
    fractions = t3.mean_depth(bins, cascade, report.binary)
    if fractions is not None:
        lines.append(f"- The calibrated cascade ({bins} bins) stopped after 1/2/3 LLMs on "
                     + " / ".join(f"{x:.2f}" for x in fractions) + " of the binary test items.")  # fmt: skip
    from ls_backend.ensemble.classification import precision_recall_f1

    always_yes = [
        float(precision_recall_f1(t.labels[t.labeled], np.full(int(t.labeled.sum()), positive_index(t)), 2,
                                  positive_index(t))["f1"])
        for t in (report.table[name] for name in report.binary)
    ]  # fmt: skip
    accuracy_check = next((c for c in report.comparisons if c.name.startswith("accuracy, ")), None)
    text = (f"- F1 of yes is not symmetric: always answering yes scores a mean F1 of "
            f"{float(np.mean(always_yes)):.3f} on these binary tasks, answering no scores 0; ")  # fmt: skip
    if accuracy_check is not None:
        text += (f"by accuracy, which treats both answers alike, {accuracy_check.name} is "
                 f"{float(np.mean(accuracy_check.a)):.3f} vs {float(np.mean(accuracy_check.b)):.3f} "
                 f"(p {pval(accuracy_check.test.p_value)}, {accuracy_check.test.n_pairs} pairs).")  # fmt: skip
    lines.append(text)
    half = frontier_at_half_vote(report)
    if half is not None:
        lines.append(f"- The cost-aware cascade (lambda sweep, {max(s.cascade_bins)} bins, first evaluation split): "
                     "the policy each binary task picks on its training items within half of weighted majority "
                     f"vote's cost reaches a mean test F1 of {half[0]:.3f} at {half[1]:.2f}x the cheapest LLM, "
                     f"against the vote's {half[2]:.3f} at {half[3]:.2f}x ({half[4]} tasks; one split, so no test).")  # fmt: skip
    for comparison in report.comparisons:
        if "SV argmax" in comparison.name:
            lines.append(f"- Beyond the paper: {comparison.name}: mean {float(np.mean(comparison.b)):.3f} -> "
                         f"{float(np.mean(comparison.a)):.3f} over {comparison.test.n_pairs} (LLM, task) pairs, "
                         f"p {pval(comparison.test.p_value)}.")  # fmt: skip
    best_single = max(report.llms, key=lambda m: float(t3.pairs(bins, m, "f1", report.binary).mean()))
    lines.append(f"- The best single LLM by F1 is `{best_single}` "
                 f"({float(t3.pairs(bins, best_single, 'f1', report.binary).mean()):.3f}); the calibrated cascade "
                 f"reaches {float(t3.pairs(bins, cascade, 'f1', report.binary).mean()):.3f}.")  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- figures


def make_figures(report: Report, figures_dir: Path, out_path: Path, curves: Any) -> dict[str, str]:
    from ls_backend import plots

    s = report.settings
    experiment = report.calib.experiment
    written: dict[str, Path] = {}
    if curves:
        written["Reliability diagrams (binary tasks, held-out items pooled), before and after calibration"] = (
            plots.reliability_diagram(curves, figures_dir / "reliability.png", max_columns=len(curves)))  # fmt: skip

    panels: dict[str, dict[str, plots.AceCurve]] = {}
    baselines: dict[str, dict[str, float]] = {}
    shots = np.array(sorted(s.shots))
    for cal in experiment.config["calibrators"]:
        for llm in experiment.llms:
            title = f"{llm} / {cal}"
            methods = {}
            for sampler in experiment.config["samplers"]:
                stats = [
                    experiment.summary(llm, Scenario("in-task", cal, int(k), sampler).key) for k in shots
                ]
                if any(x is None for x in stats):
                    continue
                methods[sampler] = plots.AceCurve(
                    shots, np.array([x["mean"] for x in stats if x]), np.array([x["q25"] for x in stats if x]),
                    np.array([x["q75"] for x in stats if x]),
                )  # fmt: skip
            if methods:
                panels[title] = methods
                uncal = experiment.summary(llm, UNCALIBRATED)
                oot_key = f"SIM-OOT/{cal}" if f"SIM-OOT/{cal}" in experiment.scenarios else f"ALL-OOT/{cal}"
                oot = experiment.summary(llm, oot_key)
                baselines[title] = {
                    "uncalibrated": uncal["mean"] if uncal else math.nan,
                    oot_key: oot["mean"] if oot else math.nan,
                }
    if panels:
        written["ACE against shots: mean over binary tasks, band = per-task 25th-75th percentile"] = (
            plots.ace_vs_shots(
                panels,
                figures_dir / "ace_vs_shots.png",
                baselines=baselines,
                max_columns=len(experiment.llms),
            )
        )

    frontier_panels = _frontier_panels(report)
    if frontier_panels:
        written[f"F1 against cost: the calibrated cascade's cost-aware frontier ({max(s.cascade_bins)} bins, first "
                "split) and the fixed policies"] = plots.cost_frontier(
            frontier_panels, figures_dir / "cost_frontier.png")  # fmt: skip
    return {
        caption: os.path.relpath(path, out_path.parent).replace(os.sep, "/")
        for caption, path in written.items()
    }


def frontier_pick(frontier: Sequence[Mapping[str, Any]], budget: float) -> Mapping[str, Any]:
    """The most accurate frontier policy whose training cost is within ``budget`` x the cheapest policy's (the
    frontier is ordered by cost, F1 rising), or the cheapest one."""
    cheapest_train = frontier[0]["cost_per_item"]
    within = [p for p in frontier if p["cost_per_item"] <= budget * cheapest_train * (1 + 1e-9)]
    return within[-1] if within else frontier[0]


def frontier_at_half_vote(report: Report) -> tuple[float, float, float, float, int] | None:
    """Mean over binary tasks (first split) of the frontier policy picked within half of weighted majority vote's
    relative cost: (its test F1, its test relative cost, the vote's F1, the vote's relative cost, tasks)."""
    t3 = report.table3
    wmv = WMV_CAL.format(cal=report.settings.cascade_calibrator)
    usable = [t for t in report.binary if t3.frontiers[t].get("frontier")]
    if not usable:
        return None
    picks, votes = [], []
    for task in usable:
        vote = next(row for row in t3.frontiers[task]["rows"] if row["method"] == wmv)
        pick = frontier_pick(t3.frontiers[task]["frontier"], 0.5 * float(vote["relative_cost"]))
        picks.append((pick["test_f1"], pick["test_relative_cost"]))
        votes.append((float(vote["f1"]), float(vote["relative_cost"])))
    p, v = np.mean(picks, axis=0), np.mean(votes, axis=0)
    return float(p[0]), float(p[1]), float(v[0]), float(v[1]), len(usable)


def _frontier_panels(report: Report) -> dict[str, Any]:
    """Per task: the frontier (test relative cost, test F1) and the fixed policies of the same split; first, the
    mean over binary tasks of the frontier policy each task picks under a budget (train cost / cheapest LLM)."""
    from ls_backend.plots import FrontierPanel

    t3 = report.table3
    short = {m: m.replace("weighted majority", "WMV") for m in t3.methods}
    per_task: dict[str, Any] = {}
    for task in report.binary + report.multiclass:
        result = t3.frontiers[task]
        frontier = result.get("frontier") or []
        points = {
            short[row["method"]]: (float(row["relative_cost"]), float(row["f1"])) for row in result["rows"]
        }
        per_task[task] = FrontierPanel(
            np.array([p["test_relative_cost"] for p in frontier]),
            np.array([p["test_f1"] for p in frontier]),
            points,
        )
    panels: dict[str, Any] = {}
    budgets = np.linspace(1.0, len(report.llms) * 2.0, 60)
    chosen_cost, chosen_f1 = [], []
    usable = [t for t in report.binary if t3.frontiers[t].get("frontier")]
    if usable:
        for budget in budgets:
            costs, f1s = [], []
            for task in usable:
                pick = frontier_pick(t3.frontiers[task]["frontier"], budget)
                costs.append(pick["test_relative_cost"])
                f1s.append(pick["test_f1"])
            chosen_cost.append(float(np.mean(costs)))
            chosen_f1.append(float(np.mean(f1s)))
        mean_points = {
            short[m]: (float(np.mean([per_task[t].points[short[m]][0] for t in usable])),
                       float(np.mean([per_task[t].points[short[m]][1] for t in usable])))
            for m in t3.methods
        }  # fmt: skip
        panels["mean over binary tasks"] = FrontierPanel(
            np.array(chosen_cost), np.array(chosen_f1), mean_points
        )
    panels.update(per_task)
    return panels


# ------------------------------------------------------------------------------------------------- main


def reproduce(
    scores: Path,
    tasks: Path | None,
    out: Path,
    figures_dir: Path,
    settings: Settings,
    *,
    embeddings_file: Path | None = None,
    costs_file: Path | None = None,
    n_jobs: int = 1,
    progress: bool = True,
    command: str = "",
) -> str:
    """Run everything and write ``out`` (and the figures); returns the markdown."""
    table, _ = load_table(scores, tasks)
    if costs_file is not None:
        table = apply_costs(table, costs_file)
    llms = table.llms
    binary = [t.name for t in table if len(t.classes) == 2]
    multiclass = [t.name for t in table if len(t.classes) != 2]
    if not binary:
        raise ValueError("the paper's protocol needs binary tasks; the scores table has none")
    binary_table = subtable(table, binary)
    notes: list[str] = []
    embeddings = task_embeddings(binary_table, embeddings_file)
    max_shots = max(settings.shots)

    calib = run_calibration(binary_table, embeddings, settings, progress, keep_shots=max_shots)
    calib_multi = None
    if multiclass:
        calib_multi = run_calibration(subtable(table, multiclass), None, settings, progress, keep_shots=None)
    experiment = calib.experiment
    best_at_max = {
        row["llm"]: row["scenario"]
        for row in experiment.table2_rows()
        if row["shots"] == max_shots and row.get("best") is not None
    }
    curves, pooled = reliability_curves(binary_table, calib, best_at_max, settings.ace_bins)
    n_labeled = int(np.median([int(t.labeled.sum()) for t in binary_table]))
    floor = ace_noise_floor(binary_table, llms, settings, n_heldout=max(1, n_labeled - max_shots))
    answers = answer_check(binary_table, llms, settings, shots=max_shots)

    jobs = cascade_jobs(subtable(table, binary + multiclass), llms, settings)
    results = run_cascades(jobs, n_jobs, progress)
    table3 = collect_table3(results, binary + multiclass, settings)
    claims, comparisons = build_claims(
        {"experiment": experiment, "table3": table3, "binary": binary, "best_at_max": best_at_max}, settings
    )
    for metric, what in (("acc", "accuracy"), ("f1", "F1")):
        if answers.values[f"{metric}_raw"][llms[0]]:
            comparisons.append(compare(f"{what}, in-task SV argmax ({max_shots} labels) vs the LLM's own answer",
                                       "SV argmax", "own answer", answers.pairs(f"{metric}_sv"),
                                       answers.pairs(f"{metric}_raw"), "(LLM, task) mean over draws",
                                       settings))  # fmt: skip

    prompt_study, answer_md, headline = answer_quality(
        table, tasks, scores.parent, embeddings_file, settings, progress, costs_file
    )

    provenance = None
    provenance_path = scores.parent / "provenance.json"
    if provenance_path.exists():
        provenance = json.loads(provenance_path.read_text(encoding="utf-8"))
    discussion = (
        DISCUSSION.read_text(encoding="utf-8")
        if DISCUSSION.exists()
        else "(docs/benchmark/discussion.md is missing.)"
    )
    report = Report(
        settings=settings, scores_path=_display_path(scores), scores_sha256=file_sha256(scores), command=command,
        table=table, llms=llms, binary=binary, multiclass=multiclass, calib=calib, calib_multi=calib_multi,
        table3=table3, claims=claims, comparisons=comparisons, best_at_max=best_at_max, pooled_aces=pooled,
        noise_floor=floor, answers=answers, figures={}, provenance=provenance, discussion=discussion, notes=notes,
        diagnostics=binary_diagnostics(table, binary, llms),
        costs_path=_display_path(costs_file) if costs_file else None,
        costs_sha256=file_sha256(costs_file) if costs_file else None,
        prompt_study=prompt_study, answer_study_md=answer_md, answer_headline=headline,
    )  # fmt: skip
    report.figures = make_figures(report, figures_dir, out, curves)
    text = render(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return text


def answer_quality(
    table: ScoresTable, tasks: Path | None, folder: Path, embeddings_file: Path | None, settings: Settings,
    progress: bool, costs_file: Path | None = None,
) -> tuple[dict[str, Any] | None, str | None, dict[str, float]]:  # fmt: skip
    """The prompt study beside the scores (read, not run) and the answer study (run on the scores, with the
    content-free scores and item embeddings beside them when they are there)."""
    from ls_backend.benchmark.answers import (
        Recipe,
        StudySettings,
        answers_markdown,
        bc_curve_markdown,
        bc_min_items,
        bc_sample_curve,
        item_embeddings_by_task,
        run_answer_study,
        student_markdown,
    )  # fmt: skip
    from ls_backend.datasets import NATURAL_SHARES
    from ls_backend.embeddings import read_text_embeddings
    from ls_backend.loop.trainer import LoopConfig
    from ls_backend.server.config import CascadeSettings
    from ls_backend.server.oot import CONTENT_FREE_FILE

    study_path = folder / "prompt_study.json"
    prompt_study = json.loads(study_path.read_text(encoding="utf-8")) if study_path.exists() else None
    if tasks is None:
        return prompt_study, None, {}
    from ls_backend.tasks import load_tasks

    specs = load_tasks(tasks)
    texts = {
        n: " ".join(p.strip() for p in (t.question, t.description) if p and p.strip())
        for n, t in specs.items()
    }
    pinned = json.loads(embeddings_file.read_text(encoding="utf-8")) if embeddings_file else None
    memo: dict[str, np.ndarray] = {}

    def embed(batch: Sequence[str]) -> np.ndarray:
        if (
            pinned is not None
        ):  # --task-embeddings pins each task's vector; the project's text is a task's text
            by_text = {texts[n]: np.asarray(v, dtype=np.float64) for n, v in pinned.items() if n in texts}
            return np.stack([by_text[t] for t in batch])
        missing = [t for t in dict.fromkeys(batch) if t not in memo]
        if missing:
            from ls_backend.embeddings import embed_texts

            memo.update(zip(missing, embed_texts(missing), strict=True))
        return np.stack([memo[t] for t in batch])

    cf_path = folder / CONTENT_FREE_FILE
    content_free = read_scores(cf_path) if cf_path.exists() else None
    vectors_path = folder / "embeddings.npz"
    item_vectors = (
        item_embeddings_by_task(table, read_text_embeddings(vectors_path)[1])
        if vectors_path.exists()
        else None
    )
    defaults = CascadeSettings()
    served = Recipe(defaults.correction, defaults.calibrator, defaults.answer)
    study_settings = StudySettings(
        repeats=settings.answer_repeats,
        seed=settings.seed,
        served=served,
        cost_weight=LoopConfig().cost_weight,
    )
    say = (lambda view: print(f"answer study: {view}", file=sys.stderr, flush=True)) if progress else None
    costs = json.loads(costs_file.read_text(encoding="utf-8")) if costs_file is not None else {}
    student_costs = costs.get("student", {}).get("tasks")
    study = run_answer_study(
        table, texts, embed, content_free, item_vectors, NATURAL_SHARES, study_settings, say, student_costs
    )
    loop = LoopConfig()
    markdown, headline = answers_markdown(
        study, table.llms, served, study_settings, loop.student_min_labels if loop.student else None
    )
    student_md, student_headline = student_markdown(study, table.llms, study_settings)
    if student_md:
        markdown += "\n" + student_md
        headline |= student_headline
    if content_free is not None:
        curve = bc_sample_curve(table, content_free, seed=settings.seed)
        needed = bc_min_items(curve)
        markdown += (
            "\n### How many items batch calibration needs\n\nAccuracy of each LLM's corrected answer (the argmax of "
            "its corrected logits, no calibrator) on every item of the balanced binary tasks, mean over tasks, with "
            "BC fitted on that many random items of the task (10 draws each) or on all of them, against CC and no "
            "correction:\n\n" + bc_curve_markdown(curve) + "\n\n"
            + (f"BC is at least as accurate as CC, which stands in before it, from **{needed}** items on (the mean over "
               f"LLMs); the product's `cascade.bc_min_items` is {defaults.bc_min_items}.\n"
               if needed is not None else "BC did not reach CC's accuracy at any of these sizes.\n")
        )  # fmt: skip
    return prompt_study, markdown, headline


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def write_synthetic(folder: Path, n_items: int = 500, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic table of the benchmark's shape (12 binary + 2 multi-class tasks x ``n_items`` x 3 LLMs) and its
    tasks file, for trying the reproduction before the real scores exist."""
    import yaml

    from ls_backend.datasets import BBC_TOPICS, TREC_CLASSES
    from ls_backend.scores import write_scores
    from ls_backend.server.oot import CONTENT_FREE_FILE
    from ls_backend.synthetic import make_synthetic_scores

    llms = ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct")
    costs = (0.2, 0.6, 0.9)
    table = make_synthetic_scores(
        n_tasks=12, n_items=n_items, llms=llms, seed=seed, n_families=4, base_costs=costs
    )
    for k, classes in enumerate((tuple(TREC_CLASSES.values()), BBC_TOPICS)):
        extra = make_synthetic_scores(n_tasks=1, n_items=n_items, classes=classes, llms=llms, seed=seed + 1 + k,
                                      base_costs=costs, name_prefix=f"multi{len(classes)}_")  # fmt: skip
        table.tasks.update(extra.tasks)
    folder.mkdir(parents=True, exist_ok=True)
    scores, tasks = folder / "scores.jsonl.gz", folder / "tasks.yaml"
    write_scores(table, scores)
    # content-free scores (what CC fits on): each LLM's mean logits over the task's items, as the prompt's prior
    content_free = ScoresTable()
    for t in table:
        mean = t.logits.mean(axis=1, keepdims=True).repeat(3, axis=1)
        content_free.tasks[t.name] = TaskScores(
            name=t.name, classes=t.classes, items=np.array(["cf0", "cf1", "cf2"]), labels=np.full(3, -1),
            llms=t.llms, logits=mean, answers=mean.argmax(axis=2), costs=t.costs[:, :3], description=t.description,
        )  # fmt: skip
    write_scores(content_free, folder / CONTENT_FREE_FILE)
    spec = {t.name: {"question": t.description or t.name, "classes": list(t.classes),
                     "description": t.description or t.name} for t in table}  # fmt: skip
    tasks.write_text(yaml.safe_dump({"tasks": spec}, sort_keys=False), encoding="utf-8")
    return scores, tasks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scores", default=DEFAULT_SCORES, help=f"scores table (default {DEFAULT_SCORES})")
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"tasks file with descriptions (default {DEFAULT_TASKS})"
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"markdown report to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--figures", default=DEFAULT_FIGURES, help=f"folder for the PNGs (default {DEFAULT_FIGURES})"
    )
    parser.add_argument(
        "--costs",
        help="seconds per item per (LLM, task) from scripts/measure_costs.py (default: costs.json beside the "
        "scores file, when there is one; '' = the scores table's own cost column)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="small settings for smoke tests (not for conclusions)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes for Table 3 (results do not change; default: 2, or 1 on a 1-CPU machine)",
    )
    parser.add_argument("--repeats", type=int, help="override: in-task repeats per cell")
    parser.add_argument("--n-clusters", type=int, help="override: SIM-OOT clusters (default 4)")
    parser.add_argument("--trials", type=int, help="override: Optuna trials per tuning (the paper: 400)")
    parser.add_argument("--eval-repeats", type=int, help="override: Table 3 evaluation splits per task")
    parser.add_argument(
        "--task-embeddings", help="JSON {task: [floats]} instead of embedding descriptions with MiniLM"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--write-synthetic",
        metavar="DIR",
        help="write a synthetic scores table of the benchmark's shape and its tasks file, then exit",
    )
    parser.add_argument(
        "--synthetic-items", type=int, default=500, help="items per task for --write-synthetic"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_optuna()
    if args.write_synthetic:
        written = write_synthetic(Path(args.write_synthetic), args.synthetic_items, args.seed)
        print(f"wrote {written[0]} and {written[1]}")
        return 0
    if args.jobs < 1:
        print("reproduce_paper: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    scores = Path(args.scores)
    if not scores.exists():
        print(f"reproduce_paper: error: scores file {scores} does not exist; scripts/rescore_benchmark.py writes it "
              "(hours), or try --write-synthetic DIR first", file=sys.stderr)  # fmt: skip
        return 2
    tasks = Path(args.tasks) if args.tasks else None
    if tasks is not None and not tasks.exists():
        print(f"reproduce_paper: error: tasks file {tasks} does not exist (--tasks '' runs without descriptions)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.costs is None:
        beside = scores.parent / "costs.json"
        costs = beside if beside.exists() else None
    else:
        costs = Path(args.costs) if args.costs else None
        if costs is not None and not costs.exists():
            print(f"reproduce_paper: error: costs file {costs} does not exist", file=sys.stderr)
            return 2
    settings = replace(QUICK if args.quick else Settings(), seed=args.seed)
    overrides = {k: v for k, v in (("repeats", args.repeats), ("trials", args.trials),
                                   ("eval_repeats", args.eval_repeats), ("n_clusters", args.n_clusters))
                 if v is not None}  # fmt: skip
    if any(v < 1 for v in overrides.values()):
        print(
            "reproduce_paper: error: --repeats, --trials, --eval-repeats and --n-clusters must be >= 1",
            file=sys.stderr,
        )
        return 2
    settings = replace(settings, **overrides)
    command = " ".join(
        ["python scripts/reproduce_paper.py", f"--scores {_display_path(scores)}"]
        + ([f"--tasks {_display_path(tasks)}"] if tasks else [])
        + ([f"--costs {_display_path(costs)}"] if costs else [])
        + [f"--seed {args.seed}"]
        + (["--quick"] if args.quick else [])
        + [f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()]
        + ([f"--task-embeddings {_display_path(Path(args.task_embeddings))}"] if args.task_embeddings else [])
    )
    try:
        reproduce(
            scores, tasks, Path(args.out), Path(args.figures), settings,
            embeddings_file=Path(args.task_embeddings) if args.task_embeddings else None, costs_file=costs,
            n_jobs=args.jobs,
            progress=not args.no_progress, command=command,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"reproduce_paper: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and figures in {args.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
