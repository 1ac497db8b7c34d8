"""The per-task Table 3 runner that ``lwc cascade-report`` and ``lwc reproduce`` share: one
:func:`ls_backend.ensemble.report.cascade_table` call per job, in this process or in worker processes. Every job
carries its seed, so the results are the same whatever the number of processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ls_backend.calibration import single_threaded_blas
from ls_backend.loop.tuning import quiet_optuna
from ls_backend.scores import TaskScores


@dataclass(frozen=True)
class TableOptions:
    """The parameters of one :func:`~ls_backend.ensemble.report.cascade_table` call (its defaults)."""

    calibrator: str = "ST"
    n_bins: int = 10
    n_trials: int = 100
    n_splits: int = 5
    n_eval_splits: int = 3
    test_size: float = 0.2
    seed: int = 0
    lam: float = 0.0
    budget: float | None = None
    positive_class: int | None = None
    reference_llm: int = 0
    frontier: bool = True


@dataclass(frozen=True)
class CascadeJob:
    """One task's labeled items, LLMs in table order, and the options of one Table 3 computation on them."""

    task: str
    logits: np.ndarray  # (L, n, C)
    answers: np.ndarray  # (L, n)
    costs: np.ndarray  # (L, n)
    labels: np.ndarray  # (n,)
    llms: tuple[str, ...]
    options: TableOptions


def task_job(task: TaskScores, llms: Sequence[str], options: TableOptions) -> CascadeJob:
    """The job of ``task``'s labeled items, asking ``llms`` in that order."""
    order = [task.llm_index(llm) for llm in llms]
    labeled = task.labeled
    return CascadeJob(
        task=task.name, logits=task.logits[order][:, labeled], answers=task.answers[order][:, labeled],
        costs=task.costs[order][:, labeled], labels=task.labels[labeled], llms=tuple(llms), options=options,
    )  # fmt: skip


def run_job(job: CascadeJob, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The Table 3 result of one job (top level: it runs in worker processes); ``on_step`` after each tuning."""
    from ls_backend.ensemble.report import cascade_table

    o = job.options
    with single_threaded_blas():
        return cascade_table(
            job.logits, job.answers, job.costs, job.labels, llms=job.llms, calibrator=o.calibrator,
            n_bins=o.n_bins, n_trials=o.n_trials, n_splits=o.n_splits, n_eval_splits=o.n_eval_splits,
            test_size=o.test_size, seed=o.seed, lam=o.lam, budget=o.budget, positive_class=o.positive_class,
            reference_llm=o.reference_llm, frontier=o.frontier, on_step=on_step,
        )  # fmt: skip


def expected_cost(job: CascadeJob) -> float:
    """A job's run time, relative to the others': items x LLMs x bins x trials x inner splits x evaluation splits.
    Only its order matters: the pool starts the longest jobs first. On the benchmark (500 items, 3 LLMs, 100
    trials) a 10-bin split took 1.7x as long as a 5-bin one (5.5 s against 3.2 s), whatever the task's classes or
    the frontier; this estimate says 2x, which orders them the same."""
    o = job.options
    n_llms, n_items = job.answers.shape
    return float(n_items * n_llms * o.n_bins * o.n_trials * o.n_splits * o.n_eval_splits)


def run_jobs(
    jobs: Sequence[CascadeJob],
    n_jobs: int = 1,
    *,
    on_start: Callable[[CascadeJob], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Iterator[tuple[CascadeJob, dict[str, Any]]]:
    """Each job with its result, in job order. With ``n_jobs`` > 1 the jobs run in that many spawned worker
    processes, the longest expected first (:func:`expected_cost`; ties in job order), so that the workers do not
    wait at the end on one long job started last; ``on_start`` and ``on_step`` (which report progress within a
    job) are not called then. Jobs not started yet are cancelled when the caller stops early."""
    if n_jobs <= 1:
        for job in jobs:
            if on_start is not None:
                on_start(job)
            yield job, run_job(job, on_step)
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    # spawned, not forked: this process may hold threads (BLAS, tqdm) that a fork would copy mid-state
    context = multiprocessing.get_context("spawn")
    longest_first = sorted(
        range(len(jobs)), key=lambda i: -expected_cost(jobs[i])
    )  # stable: ties in job order
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context, initializer=quiet_optuna) as pool:
        futures: dict[int, Future[dict[str, Any]]] = {}
        try:
            for i in longest_first:  # the pool starts them in the order submitted
                futures[i] = pool.submit(run_job, jobs[i])
            for i, job in enumerate(jobs):
                yield job, futures[i].result()
        finally:
            for future in futures.values():
                future.cancel()
