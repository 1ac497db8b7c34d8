"""The reproduction's Table 3: repeated random 80/20 evaluation splits of every task at each bin count, run by the
shared per-task runner, and their results gathered per bin count, method, metric and task."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ls_backend.benchmark.settings import Settings
from ls_backend.benchmark.table3_runner import CascadeJob, TableOptions, run_jobs, task_job
from ls_backend.scores import ScoresTable

WMV_CAL = "weighted majority (calibrated {cal})"
CASCADE_CAL = "cascade (calibrated {cal})"
METRICS = ("f1", "accuracy", "precision", "recall", "cost_per_item", "relative_cost")


def cascade_seed(seed: int, task: str, repeat: int) -> int:
    """Seed of one evaluation split: the same for both bin counts (paired), independent of the other tasks."""
    state = np.random.SeedSequence([seed, zlib.crc32(task.encode("utf-8")), repeat]).generate_state(1)[0]
    return int(state) % (2**31 - 1)


@dataclass(frozen=True)
class SplitJob:
    """One evaluation split (``repeat``) of one task at one bin count."""

    bins: int
    repeat: int
    job: CascadeJob

    @property
    def task(self) -> str:
        return self.job.task

    @property
    def seed(self) -> int:
        return self.job.options.seed


def cascade_jobs(table: ScoresTable, llms: Sequence[str], settings: Settings) -> list[SplitJob]:
    """Every task x evaluation split x bin count; the cost-aware frontier only on the first split at the most
    bins (the figure's)."""
    jobs = []
    for task in table:
        positive = task.classes.index("yes") if len(task.classes) == 2 and "yes" in task.classes else None
        for repeat in range(settings.eval_repeats):
            for bins in settings.cascade_bins:
                options = TableOptions(
                    calibrator=settings.cascade_calibrator, n_bins=bins, n_trials=settings.trials,
                    n_splits=settings.inner_splits, n_eval_splits=1, test_size=settings.test_size,
                    seed=cascade_seed(settings.seed, task.name, repeat), positive_class=positive, reference_llm=0,
                    frontier=repeat == 0 and bins == max(settings.cascade_bins),
                )  # fmt: skip
                jobs.append(SplitJob(bins, repeat, task_job(task, llms, options)))
    return jobs


def run_cascades(
    jobs: Sequence[SplitJob], n_jobs: int, progress: bool
) -> dict[tuple[int, str, int], dict[str, Any]]:
    """Every job's result by (bins, task, repeat); the same results whatever ``n_jobs`` (each job is seeded)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="Table 3 (cascades)", unit="split", disable=not progress)

    def show(job: CascadeJob) -> None:
        bar.set_postfix_str(f"{job.task} {job.options.n_bins} bins")

    results: dict[tuple[int, str, int], dict[str, Any]] = {}
    runs = run_jobs([s.job for s in jobs], n_jobs, on_start=show)
    try:
        for split, (_, result) in zip(jobs, runs, strict=True):
            result.pop("policy", None)
            results[split.bins, split.task, split.repeat] = {
                "task": split.task, "bins": split.bins, "repeat": split.repeat, **result
            }  # fmt: skip
            bar.update(1)
    finally:
        bar.close()
    return results


@dataclass
class Table3:
    """Per bin count and method: per (task, repeat) values of each metric."""

    methods: list[str]
    # bins -> method -> metric -> task -> one value per evaluation split
    values: dict[int, dict[str, dict[str, dict[str, list[float]]]]]
    # bins -> method -> task -> the share of items answered after 1, 2, ... LLMs, one array per evaluation split
    depth: dict[int, dict[str, dict[str, list[np.ndarray]]]]
    frontiers: dict[str, dict[str, Any]]  # task -> cascade_table's result (largest bins, repeat 0)

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
    values: dict[int, dict[str, dict[str, dict[str, list[float]]]]] = {}
    depth: dict[int, dict[str, dict[str, list[np.ndarray]]]] = {}
    for bins in settings.cascade_bins:
        values[bins] = {m: {k: {t: [] for t in tasks} for k in METRICS} for m in methods}
        depth[bins] = {m: {} for m in methods}
        for task in tasks:
            for repeat in range(settings.eval_repeats):
                for row in results[bins, task, repeat]["rows"]:
                    for k in METRICS:
                        values[bins][row["method"]][k][task].append(float(row[k]))
                    if "depth_fractions" in row:
                        depth[bins][row["method"]].setdefault(task, []).append(
                            np.asarray(row["depth_fractions"])
                        )
    top = max(settings.cascade_bins)
    frontiers = {t: results[top, t, 0] for t in tasks}
    return Table3(methods, values, depth, frontiers)


def frontier_pick(frontier: Sequence[Mapping[str, Any]], budget: float) -> Mapping[str, Any]:
    """The most accurate frontier policy whose training cost is within ``budget`` x the cheapest policy's (the
    frontier is ordered by cost, F1 rising), or the cheapest one."""
    cheapest_train = frontier[0]["cost_per_item"]
    within = [p for p in frontier if p["cost_per_item"] <= budget * cheapest_train * (1 + 1e-9)]
    return within[-1] if within else frontier[0]


@dataclass(frozen=True)
class HalfVote:
    """Means over binary tasks (first split) of the frontier policy each picks within half of weighted majority
    vote's relative cost, and of the vote itself."""

    f1: float
    relative_cost: float
    vote_f1: float
    vote_relative_cost: float
    n_tasks: int


def frontier_at_half_vote(table3: Table3, binary: Sequence[str], calibrator: str) -> HalfVote | None:
    """The frontier policy of each binary task picked within half of the calibrated weighted majority vote's
    relative cost, against the vote; None when no task has a frontier."""
    wmv = WMV_CAL.format(cal=calibrator)
    usable = [t for t in binary if table3.frontiers[t].get("frontier")]
    if not usable:
        return None
    picks, votes = [], []
    for task in usable:
        vote = next(row for row in table3.frontiers[task]["rows"] if row["method"] == wmv)
        pick = frontier_pick(table3.frontiers[task]["frontier"], 0.5 * float(vote["relative_cost"]))
        picks.append((pick["test_f1"], pick["test_relative_cost"]))
        votes.append((float(vote["f1"]), float(vote["relative_cost"])))
    p, v = np.mean(picks, axis=0), np.mean(votes, axis=0)
    return HalfVote(float(p[0]), float(p[1]), float(v[0]), float(v[1]), len(usable))
