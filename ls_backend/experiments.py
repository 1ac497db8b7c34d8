"""The calibration experiment runner: the structure of the paper's Tables 1, 2 and 5 on any scores table.

For every LLM and every task with labeled items (the *target*), the adaptive calibration error (ACE) of the LLM's
answer scores is measured in these scenarios:

- ``uncalibrated``: the plain softmax of the class logits.
- ``ALL-OOT/<cal>`` and ``SIM-OOT/<cal>``: a calibrator (``ST`` temperature scaling, ``SV`` vector scaling)
  fitted on the labeled items of *other* tasks: all of them, or those in the target's cluster of task-description
  embeddings (:func:`ls_backend.sampling.oot_source_tasks`, including its fallback when the target is alone in its
  cluster). Only tasks with the target's class list are pooled: a calibrator's parameters are per class position,
  so logits of other class lists do not fit it.
- ``in-task/<shots>/<sampler>/<cal>``: a calibrator fitted on ``shots`` of the target's own labeled items, drawn
  by U, SE or IE (:mod:`ls_backend.sampling`); SE and IE rank items by the surrogate error
  |uncalibrated score - SIM-OOT ST score| (ALL-OOT ST when SIM-OOT has no source), which needs no target label.
  Repeated ``repeats`` times with independent seeded draws; ST and SV of one repeat share the draw.

ACE is measured only on labeled items of the target that no calibrator of that cell was fitted on: all labeled
items for ``uncalibrated`` and the out-of-task scenarios, the labeled items not drawn for in-task cells. A
(task, scenario) cell is skipped, and listed in :attr:`CalibrationExperiment.skipped`, when fewer than
``min_heldout`` items would be left to measure on, or when out-of-task calibration has no source task.

The per-task value of a scenario is the mean over its repeats; :meth:`CalibrationExperiment.summary` summarizes
those across tasks (:func:`ls_backend.metrics.summarize`). Per-task per-repeat values are kept for paired tests.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ls_backend import calibration, confidence, metrics, sampling
from ls_backend.markdown import fmt, markdown_table
from ls_backend.scores import ScoresTable, TaskScores

UNCALIBRATED = "uncalibrated"
OOT_SETTINGS = ("ALL-OOT", "SIM-OOT")
IN_TASK = "in-task"

EmbeddingsInput = np.ndarray | Mapping[str, np.ndarray] | Callable[[list[str]], np.ndarray]
"""Task-description embeddings: an array aligned with the table's tasks, a mapping by task name, or a callable
that embeds a list of descriptions (one row each)."""


@dataclass(frozen=True)
class Scenario:
    """One column of the paper's tables: how (and whether) the target task's scores were calibrated."""

    setting: str
    calibrator: str = "none"
    shots: int | None = None
    sampler: str | None = None

    @property
    def key(self) -> str:
        """``uncalibrated``, ``ALL-OOT/ST``, ``in-task/10/SE/SV``, ..."""
        if self.setting == UNCALIBRATED:
            return UNCALIBRATED
        if self.setting == IN_TASK:
            return f"{IN_TASK}/{self.shots}/{self.sampler}/{self.calibrator}"
        return f"{self.setting}/{self.calibrator}"

    @classmethod
    def from_key(cls, key: str) -> Scenario:
        parts = key.split("/")
        if parts == [UNCALIBRATED]:
            return cls(UNCALIBRATED)
        if len(parts) == 2 and parts[0] in OOT_SETTINGS:
            return cls(parts[0], parts[1])
        if len(parts) == 4 and parts[0] == IN_TASK and parts[1].isdigit():
            return cls(IN_TASK, parts[3], int(parts[1]), parts[2])
        raise ValueError(f"not a scenario key: {key!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Parameters of a calibration experiment (all of them end up in the result's JSON).

    Attributes:
        calibrators: calibrator names fitted in every calibrated scenario.
        shots: in-task budgets (labeled items used for fitting).
        samplers: in-task samplers.
        repeats: independent draws per in-task cell.
        n_bins: ACE bins.
        seed: base seed; each cell's generator is seeded from it and the names of the task and LLM, so adding a
            task does not change the draws of the others.
        n_clusters: clusters of task descriptions for SIM-OOT; None means ``round(sqrt(number of tasks))``.
        cluster_method: ``agglomerative`` (cosine, average linkage) or ``kmeans``.
        min_heldout: fewest labeled items a cell must leave to measure ACE on.
        n_strata: SE strata.
        weighted_fit: fit in-task calibrators with inverse-inclusion-probability weights
            (:func:`ls_backend.sampling.importance_weights`) instead of unweighted.
        llms: LLMs to evaluate (None: every LLM that scored every task).
    """

    calibrators: tuple[str, ...] = ("ST", "SV")
    shots: tuple[int, ...] = (10, 20, 50, 100)
    samplers: tuple[sampling.SamplerName, ...] = sampling.SAMPLERS
    repeats: int = 5
    n_bins: int = 10
    seed: int = 0
    n_clusters: int | None = None
    cluster_method: Literal["agglomerative", "kmeans"] = "agglomerative"
    min_heldout: int = 20
    n_strata: int = sampling.DEFAULT_N_STRATA
    weighted_fit: bool = False
    llms: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in self.calibrators:
            calibration.make_calibrator(name)  # raises a clear error for an unknown name
        unknown = set(self.samplers) - set(sampling.SAMPLERS)
        if unknown:
            raise ValueError(
                f"unknown sampler(s) {sorted(unknown)}; expected some of {list(sampling.SAMPLERS)}"
            )
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.shots):
            raise ValueError(f"shots must be positive integers, got {list(self.shots)}")
        if self.repeats < 1 or self.min_heldout < 1 or self.n_bins < 1 or self.n_strata < 1:
            raise ValueError("repeats, min_heldout, n_bins and n_strata must be >= 1")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {self.n_clusters}")
        if self.cluster_method not in ("agglomerative", "kmeans"):
            raise ValueError(
                f"cluster_method must be 'agglomerative' or 'kmeans', got {self.cluster_method!r}"
            )

    def scenarios(self, with_sim_oot: bool = True) -> list[Scenario]:
        """Every scenario measured, in table order."""
        settings = OOT_SETTINGS if with_sim_oot else OOT_SETTINGS[:1]
        out = [Scenario(UNCALIBRATED)]
        out += [Scenario(s, c) for s in settings for c in self.calibrators]
        out += [
            Scenario(IN_TASK, c, k, m)
            for k in sorted(self.shots)
            for m in self.samplers
            for c in self.calibrators
        ]
        return out


@dataclass(frozen=True)
class CellTrace:
    """Which items one measurement fitted on and evaluated on (item ids; for audits and tests)."""

    llm: str
    task: str
    scenario: str
    repeat: int
    fit_items: tuple[str, ...]
    eval_items: tuple[str, ...]


@dataclass
class CalibrationExperiment:
    """Results of :func:`run_calibration_experiment`.

    Attributes:
        config: the parameters, as a dict.
        llms, tasks: what was evaluated, in table order.
        scenarios: scenario keys, in table order.
        values: ``values[llm][scenario][task]`` = ACE per repeat (one value for deterministic scenarios).
        skipped: cells not measured, each ``{"llm", "task", "scenario", "reason"}``.
        sources: per task: its cluster, the ALL-OOT and SIM-OOT source tasks and any SIM-OOT fallback.
        notes: other things worth knowing about the run (missing descriptions, no embeddings, ...).
    """

    config: dict[str, Any]
    llms: tuple[str, ...]
    tasks: tuple[str, ...]
    scenarios: tuple[str, ...]
    values: dict[str, dict[str, dict[str, list[float]]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def per_task(self, llm: str, scenario: str) -> dict[str, float]:
        """Per-task ACE of one (LLM, scenario): the mean over repeats."""
        by_task = self.values.get(llm, {}).get(scenario, {})
        return {task: float(np.mean(v)) for task, v in by_task.items()}

    def summary(self, llm: str, scenario: str, tasks: Sequence[str] | None = None) -> dict[str, float] | None:
        """Across-task summary (n, mean, std, median, q25, q75, iqr) of per-task ACE; None if no task has one."""
        per_task = self.per_task(llm, scenario)
        if tasks is not None:
            per_task = {t: v for t, v in per_task.items() if t in set(tasks)}
        if not per_task:
            return None
        return metrics.summarize(list(per_task.values()))

    # --------------------------------------------------------------------------------------------- tables

    def table1_rows(self) -> list[dict[str, Any]]:
        """Table 1: uncalibrated vs ALL-OOT / SIM-OOT x ST / SV, across-task summaries per LLM."""
        keys = [k for k in self.scenarios if Scenario.from_key(k).setting != IN_TASK]
        return [self._summary_row(llm, key) for llm in self.llms for key in keys]

    def table5_rows(self) -> list[dict[str, Any]]:
        """Table 5: every in-task shots x sampler x calibrator cell, across-task summaries per LLM."""
        keys = [k for k in self.scenarios if Scenario.from_key(k).setting == IN_TASK]
        return [self._summary_row(llm, key) for llm in self.llms for key in keys]

    def table2_rows(self) -> list[dict[str, Any]]:
        """Table 2: per LLM and shot count, the in-task method with the lowest mean ACE across tasks.

        ``uncalibrated_mean`` is the uncalibrated ACE on the same tasks, for reference.
        """
        rows = []
        for llm in self.llms:
            for shots in self.config["shots"]:
                candidates = []
                for key in self.scenarios:
                    scenario = Scenario.from_key(key)
                    if scenario.setting == IN_TASK and scenario.shots == shots:
                        stats = self.summary(llm, key)
                        if stats is not None and not math.isnan(stats["mean"]):
                            candidates.append((stats["mean"], key, stats))
                if not candidates:
                    rows.append({"llm": llm, "shots": shots, "best": None, "n": 0})
                    continue
                _, best_key, stats = min(candidates, key=lambda c: c[0])
                best = Scenario.from_key(best_key)
                tasks = list(self.per_task(llm, best_key))
                uncalibrated = self.summary(llm, UNCALIBRATED, tasks)
                rows.append(
                    {
                        "llm": llm,
                        "shots": shots,
                        "best": f"{best.sampler}/{best.calibrator}",
                        "scenario": best_key,
                        **stats,
                        "uncalibrated_mean": None if uncalibrated is None else uncalibrated["mean"],
                    }
                )
        return rows

    def table1(self) -> str:
        return _markdown(
            self.table1_rows(),
            [("LLM", "llm"), ("scenario", "scenario"), *_STAT_COLUMNS],
        )

    def table2(self) -> str:
        return _markdown(
            self.table2_rows(),
            [
                ("LLM", "llm"),
                ("shots", "shots"),
                ("best", "best"),
                ("n", "n"),
                ("mean", "mean"),
                ("median", "median"),
                ("q75", "q75"),
                ("uncal. mean", "uncalibrated_mean"),
            ],
        )

    def table5(self) -> str:
        rows = [{**row, **_scenario_fields(row["scenario"])} for row in self.table5_rows()]
        return _markdown(
            rows,
            [
                ("LLM", "llm"),
                ("shots", "shots"),
                ("sampler", "sampler"),
                ("cal.", "calibrator"),
                *_STAT_COLUMNS,
            ],
        )

    def report(self) -> str:
        """The three tables and the skipped cells, as plain text."""
        parts = [
            f"ACE ({self.config['n_bins']} bins) over {len(self.tasks)} task(s); per-task values are means over "
            f"{self.config['repeats']} repeat(s) for in-task cells.",
            "",
            "Table 1: uncalibrated vs out-of-task calibration",
            self.table1(),
            "",
            "Table 2: best in-task method per shot count (lowest mean ACE)",
            self.table2(),
            "",
            "Table 5: in-task calibration, every shots x sampler x calibrator",
            self.table5(),
        ]
        fallbacks = {t: s["fallback"] for t, s in self.sources.items() if s.get("fallback")}
        if fallbacks:
            parts += ["", "SIM-OOT fallbacks:"] + [f"- {t}: {why}" for t, why in fallbacks.items()]
        if self.skipped:
            parts += ["", f"Skipped cells ({len(self.skipped)}):"]
            parts += [f"- {s['llm']} / {s['task']} / {s['scenario']}: {s['reason']}" for s in self.skipped]
        if self.notes:
            parts += ["", "Notes:"] + [f"- {note}" for note in self.notes]
        return "\n".join(parts)

    # --------------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "llms": list(self.llms),
            "tasks": list(self.tasks),
            "scenarios": list(self.scenarios),
            "values": self.values,
            "skipped": self.skipped,
            "sources": self.sources,
            "notes": self.notes,
            "tables": {
                "table1": self.table1_rows(),
                "table2": self.table2_rows(),
                "table5": self.table5_rows(),
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Everything, including the tables' rows; NaN is written as null."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibrationExperiment:
        try:
            return cls(
                config=dict(d["config"]),
                llms=tuple(d["llms"]),
                tasks=tuple(d["tasks"]),
                scenarios=tuple(d["scenarios"]),
                values={
                    llm: {
                        s: {t: [float(x) for x in v] for t, v in by_task.items()}
                        for s, by_task in by_s.items()
                    }
                    for llm, by_s in d["values"].items()
                },
                skipped=list(d.get("skipped", [])),
                sources=dict(d.get("sources", {})),
                notes=list(d.get("notes", [])),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a calibration experiment result: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> CalibrationExperiment:
        return cls.from_dict(json.loads(text))

    def _summary_row(self, llm: str, key: str) -> dict[str, Any]:
        stats = self.summary(llm, key)
        return {"llm": llm, "scenario": key, **(stats if stats is not None else {"n": 0})}


def run_calibration_experiment(
    table: ScoresTable,
    embeddings: EmbeddingsInput | None = None,
    config: ExperimentConfig | None = None,
    *,
    progress: bool = True,
    on_cell: Callable[[CellTrace], None] | None = None,
    n_jobs: int = 1,
) -> CalibrationExperiment:
    """Measure ACE in every scenario for every LLM and task of ``table`` (see the module docstring).

    Args:
        table: the scores table; tasks without any labeled item are only reported.
        embeddings: task-description embeddings for SIM-OOT (see :data:`EmbeddingsInput`); None leaves SIM-OOT
            out (SE/IE then use ALL-OOT ST as the reference of the surrogate error).
        config: the experiment's parameters.
        progress: show a progress bar over tasks (tqdm, on stderr).
        on_cell: called with the fitted and evaluated items of every measurement, in this process and in the
            same order whatever ``n_jobs``.
        n_jobs: worker processes measuring the (task, LLM) pairs (1: all in this process). Every pair's draws
            are seeded by its names and its results are merged in the serial order, so the result, the skipped
            cells and the traces are the same whatever ``n_jobs``; the workers' warnings are re-issued here.
    """
    config = config or ExperimentConfig()
    if not len(table):
        raise ValueError("the scores table has no task")
    llms = _select_llms(table, config.llms)
    tasks = list(table)
    names = [t.name for t in tasks]
    labeled_counts = {t.name: int(t.labeled.sum()) for t in tasks}
    if not any(labeled_counts.values()):
        raise ValueError("no task of the scores table has a labeled item; calibration needs labels")

    notes: list[str] = []
    clusters: np.ndarray | None = None
    matrix: np.ndarray | None = None
    if embeddings is None:
        notes.append("no task-description embeddings given: SIM-OOT left out")
    else:
        matrix = _embedding_matrix(tasks, embeddings, notes)
        n_clusters = config.n_clusters or max(1, round(math.sqrt(len(tasks))))
        clusters = sampling.cluster_tasks(matrix, n_clusters, method=config.cluster_method, seed=config.seed)
    scenarios = config.scenarios(with_sim_oot=clusters is not None)

    result = CalibrationExperiment(
        config=_config_dict(config),
        llms=llms,
        tasks=tuple(names),
        scenarios=tuple(s.key for s in scenarios),
        values={llm: {s.key: {} for s in scenarios} for llm in llms},
        notes=notes,
    )
    for task in tasks:
        eligible = {t.name for t in tasks if t.classes == task.classes and labeled_counts[t.name] > 0}
        entry: dict[str, Any] = {
            "ALL-OOT": list(sampling.oot_source_tasks(task.name, names, eligible=eligible).tasks),
            "cluster": None,
            "SIM-OOT": None,
            "fallback": None,
        }
        if clusters is not None:
            sim = sampling.oot_source_tasks(task.name, names, clusters, eligible=eligible, embeddings=matrix)
            entry.update(cluster=int(clusters[names.index(task.name)]), **{"SIM-OOT": list(sim.tasks)})
            entry["fallback"] = sim.fallback
        result.sources[task.name] = entry

    from tqdm.auto import tqdm

    measured = [t for t in tasks if labeled_counts[t.name] >= config.min_heldout]
    jobs = [_pair_job(table, task, llm, result.sources[task.name], config, on_cell is not None)
            for task in measured for llm in llms]  # fmt: skip
    with calibration.single_threaded_blas(), _pair_outcomes(jobs, n_jobs) as outcomes:
        for task in tqdm(tasks, desc="calibration experiment", unit="task", disable=not progress):
            if labeled_counts[task.name] < config.min_heldout:
                reason = f"{labeled_counts[task.name]} labeled item(s), fewer than min_heldout={config.min_heldout}"
                for llm in llms:
                    _skip(result, llm, task.name, "*", reason)
                continue
            item_ids = task.items[task.labeled].astype(str).tolist()
            for llm in llms:
                _merge_pair(result, task.name, llm, next(outcomes), item_ids, on_cell)
    return result


@dataclass(frozen=True)
class _PairJob:
    """All that the measurements of one (task, LLM) pair need, and no more, so that it is cheap to send to a worker
    process: the LLM's logits, answers and labels of the task's labeled items, and for each out-of-task setting
    measured (in table order) the pooled labeled logits and labels of its source tasks, or None when it has none.
    ``trace``: also return which items each measurement fitted and evaluated on (only when someone listens)."""

    task: str
    llm: str
    logits: np.ndarray  # (n, C)
    answers: np.ndarray  # (n,)
    labels: np.ndarray  # (n,)
    sources: tuple[tuple[str, tuple[np.ndarray, np.ndarray] | None], ...]
    config: ExperimentConfig
    trace: bool


@dataclass(frozen=True)
class _Measurement:
    """One ACE of a (task, LLM) pair and, when traced, the positions (among the task's labeled items) of the items
    it was fitted and evaluated on: compact unsigned integers, turned into item ids by the parent process."""

    scenario: str
    repeat: int
    ace: float
    fit: np.ndarray | None
    evaluated: np.ndarray | None


@dataclass
class _PairOutcome:
    """What one (task, LLM) pair adds to the experiment, in the serial order: its measurements, its skipped cells
    (scenario, reason) and the warnings of its fits (category, message, file, line; only from worker processes,
    whose warnings the parent re-issues)."""

    measurements: list[_Measurement] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[type[Warning], str, str, int]] = field(default_factory=list)


def _pair_job(
    table: ScoresTable,
    task: TaskScores,
    llm: str,
    sources: Mapping[str, Any],
    config: ExperimentConfig,
    trace: bool,
) -> _PairJob:
    li = task.llm_index(llm)
    labeled = task.labeled
    pooled = tuple(
        (setting, _pool(table, sources[setting], llm) if sources[setting] else None)
        for setting in OOT_SETTINGS
        if sources[setting] is not None
    )
    return _PairJob(task.name, llm, task.logits[li, labeled], task.answers[li, labeled], task.labels[labeled],
                    pooled, config, trace)  # fmt: skip


@contextmanager
def _pair_outcomes(jobs: Sequence[_PairJob], n_jobs: int) -> Iterator[Iterator[_PairOutcome]]:
    """The jobs' outcomes in job order: measured here, lazily, or with ``n_jobs`` > 1 in that many spawned worker
    processes (not forked: this process may hold BLAS or tqdm threads that a fork would copy mid-state). Pending
    jobs are cancelled when the caller stops early."""
    if n_jobs <= 1 or len(jobs) <= 1:
        yield map(_measure_pair, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=context)
    try:
        yield pool.map(_measure_pair_in_worker, jobs, chunksize=1)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _measure_pair_in_worker(job: _PairJob) -> _PairOutcome:
    """:func:`_measure_pair` in a worker process: one BLAS thread, and the warnings recorded for the parent."""
    with calibration.single_threaded_blas(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the parent's filters decide, as they would in a serial run
        outcome = _measure_pair(job)
    outcome.warnings = [(w.category, str(w.message), w.filename, w.lineno) for w in caught]
    return outcome


_WARNING_REGISTRY: dict[Any, Any] = globals().setdefault("__warningregistry__", {})


def _merge_pair(
    result: CalibrationExperiment,
    task: str,
    llm: str,
    outcome: _PairOutcome,
    item_ids: Sequence[str],
    on_cell: Callable[[CellTrace], None] | None,
) -> None:
    """Add one pair's outcome to ``result`` and hand its traces to ``on_cell``, as the serial run does."""
    for category, message, filename, lineno in outcome.warnings:
        # this module's registry: a fit's warning points here (its stacklevel), so it shows as often as serially
        warnings.warn_explicit(message, category, filename, lineno, registry=_WARNING_REGISTRY)
    values = result.values[llm]

    def ids(positions: np.ndarray | None) -> tuple[str, ...]:
        assert positions is not None, "a traced pair has the positions of every measurement"
        return tuple(item_ids[i] for i in positions.tolist())

    for m in outcome.measurements:
        values[m.scenario].setdefault(task, []).append(m.ace)
        if on_cell is not None:
            on_cell(CellTrace(llm, task, m.scenario, m.repeat, ids(m.fit), ids(m.evaluated)))
    for scenario, reason in outcome.skipped:
        _skip(result, llm, task, scenario, reason)


def _measure_pair(job: _PairJob) -> _PairOutcome:
    """Every measurement of one (task, LLM) pair (top level: it runs in worker processes)."""
    config, logits, answers, labels = job.config, job.logits, job.answers, job.labels
    outcome = _PairOutcome()
    n = labels.size
    hits = answers == labels
    index_type = np.min_scalar_type(max(n - 1, 0))
    uncalibrated = confidence.confidence_scores(logits, answers)

    def record(key: str, repeat: int, scores: np.ndarray, evaluated: np.ndarray, fitted: np.ndarray) -> None:
        ace = metrics.ace(scores, hits[evaluated], n_bins=config.n_bins)
        if job.trace:
            fit, heldout = fitted.astype(index_type), evaluated.astype(index_type)
            outcome.measurements.append(_Measurement(key, repeat, ace, fit, heldout))
        else:
            outcome.measurements.append(_Measurement(key, repeat, ace, None, None))

    def skip(key: str, reason: str) -> None:
        outcome.skipped.append((key, reason))

    everything, nothing = np.arange(n), np.zeros(0, dtype=np.int64)
    record(UNCALIBRATED, 0, uncalibrated, everything, nothing)

    references: dict[str, np.ndarray] = {}
    for setting, pooled in job.sources:
        if pooled is None:
            for name in config.calibrators:
                skip(f"{setting}/{name}", "no other task with the same classes has labels")
            continue
        source_logits, source_labels = pooled
        fitted_st: calibration.Calibrator | None = None
        for name in config.calibrators:
            calibrator = calibration.make_calibrator(name).fit(source_logits, source_labels)
            if name == "ST":
                fitted_st = calibrator
            record(
                f"{setting}/{name}",
                0,
                confidence.confidence_scores(logits, answers, calibrator),
                everything,
                nothing,
            )
        if fitted_st is None:
            fitted_st = calibration.make_calibrator("ST").fit(source_logits, source_labels)
        references[setting] = confidence.confidence_scores(logits, answers, fitted_st)

    reference = references.get("SIM-OOT", references.get("ALL-OOT"))
    errors = None if reference is None else sampling.surrogate_error(uncalibrated, reference)
    for shots in sorted(config.shots):
        if n - shots < config.min_heldout:
            for sampler in config.samplers:
                for name in config.calibrators:
                    skip(
                        Scenario(IN_TASK, name, shots, sampler).key,
                        f"{n} labeled items: fewer than {shots} shots + {config.min_heldout} held out",
                    )
            continue
        for sampler_name in config.samplers:
            if errors is None and sampler_name != "U":
                for name in config.calibrators:
                    skip(
                        Scenario(IN_TASK, name, shots, sampler_name).key,
                        "no out-of-task calibrator to compute the surrogate error with",
                    )
                continue
            cell_errors = errors if errors is not None else np.zeros(n)
            for repeat in range(config.repeats):
                rng = np.random.default_rng(
                    [
                        config.seed,
                        _name_hash(job.task),
                        _name_hash(job.llm),
                        shots,
                        _name_hash(sampler_name),
                        repeat,
                    ]
                )
                drawn = sampling.sample(sampler_name, cell_errors, shots, rng, n_strata=config.n_strata)
                heldout = np.setdiff1d(everything, drawn, assume_unique=True)
                weights = None
                if config.weighted_fit:
                    probabilities = sampling.inclusion_probabilities(
                        sampler_name,
                        cell_errors,
                        drawn,
                        n_strata=config.n_strata,
                    )
                    weights = sampling.importance_weights(probabilities)
                for name in config.calibrators:
                    calibrator = calibration.make_calibrator(name).fit(logits[drawn], labels[drawn], weights)
                    scores = confidence.confidence_scores(logits[heldout], answers[heldout], calibrator)
                    record(Scenario(IN_TASK, name, shots, sampler_name).key, repeat, scores, heldout, drawn)
    return outcome


def _pool(table: ScoresTable, task_names: Sequence[str], llm: str) -> tuple[np.ndarray, np.ndarray]:
    """Labeled items' logits and labels of ``llm`` over several tasks, stacked."""
    logits, labels = [], []
    for name in task_names:
        source = table[name]
        mask = source.labeled
        logits.append(source.logits[source.llm_index(llm), mask])
        labels.append(source.labels[mask])
    return np.concatenate(logits), np.concatenate(labels)


def _skip(result: CalibrationExperiment, llm: str, task: str, scenario: str, reason: str) -> None:
    result.skipped.append({"llm": llm, "task": task, "scenario": scenario, "reason": reason})


def _select_llms(table: ScoresTable, wanted: Sequence[str] | None) -> tuple[str, ...]:
    common = table.llms
    if not common:
        raise ValueError("no LLM scored every task of the scores table")
    if wanted is None:
        return common
    missing = [m for m in wanted if m not in common]
    if missing:
        raise ValueError(f"LLM(s) {missing} did not score every task; available: {list(common)}")
    return tuple(m for m in common if m in set(wanted))


def _embedding_matrix(
    tasks: Sequence[TaskScores], embeddings: EmbeddingsInput, notes: list[str]
) -> np.ndarray:
    if isinstance(embeddings, Mapping):
        missing = [t.name for t in tasks if t.name not in embeddings]
        if missing:
            raise ValueError(f"no embedding for task(s) {missing}")
        matrix = np.stack([np.asarray(embeddings[t.name], dtype=np.float64) for t in tasks])
    elif callable(embeddings):
        undescribed = [t.name for t in tasks if not t.description.strip()]
        if undescribed:
            message = f"task(s) without a description, embedded by name: {undescribed}"
            warnings.warn(message, stacklevel=3)
            notes.append(message)
        matrix = np.asarray(embeddings([t.description.strip() or t.name for t in tasks]), dtype=np.float64)
    else:
        matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(tasks):
        raise ValueError(f"embeddings must have one row per task ({len(tasks)}), got shape {matrix.shape}")
    return matrix


def _name_hash(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _config_dict(config: ExperimentConfig) -> dict[str, Any]:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


_STAT_COLUMNS = [
    ("n", "n"),
    ("mean", "mean"),
    ("std", "std"),
    ("median", "median"),
    ("IQR", "iqr"),
    ("q75", "q75"),
]


def _scenario_fields(key: str) -> dict[str, Any]:
    scenario = Scenario.from_key(key)
    return {"shots": scenario.shots, "sampler": scenario.sampler, "calibrator": scenario.calibrator}


def _markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` by ``columns`` (title, key): floats with 4 decimals, missing values as '-',
    columns of numbers aligned right."""
    body = [[fmt(row.get(key)) for _, key in columns] for row in rows]
    numeric = [bool(body) and all(_is_number(r[i]) for r in body) for i in range(len(columns))]
    return markdown_table([title for title, _ in columns], body, right=numeric)


def _is_number(text: str) -> bool:
    if text == "-":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
