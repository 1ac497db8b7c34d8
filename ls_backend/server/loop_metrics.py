"""The learning loop's part of ``/metrics``: per-project gauges (labels by source, band counts, the serving
version and its held-out evaluation, versions by status), each project's latest pre-annotation job (``lwc_job_*``),
and the label store's group commit (``lwc_label_store_*``: webhook events per commit).

The values are gathered as plain data (:class:`Gauge`, from :func:`project_gauges` and :func:`job_gauges`), read
from the projects' files at every scrape, and handed to prometheus_client as gauge families by
:class:`LoopMetricsCollector`, which the app registers on its registry. The server's own counters and histograms
are :mod:`ls_backend.server.telemetry`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ls_backend.loop import LabelStore, VersionError
from ls_backend.loop.jobs import Job, JobStore
from ls_backend.server.project_registry import ProjectLoop
from ls_backend.server.project_status import routing_bands
from ls_backend.server.serving import served_name

logger = logging.getLogger(__name__)

PROJECT_METRICS = {
    "lwc_labels": "labeled tasks by why the label was asked for",
    "lwc_tasks_in_band": "predicted tasks by routing band of their latest score",
    "lwc_serving_version_info": "the version serving each project (value 1)",
    "lwc_serving_holdout_ace": "held-out ACE of the serving version",
    "lwc_serving_holdout_accuracy": "held-out accuracy of the serving version",
    "lwc_serving_holdout_cost_per_item": "held-out cascade cost per item of the serving version",
    "lwc_model_versions": "model versions by status (retrain history)",
}
JOB_METRICS = {
    "lwc_job_tasks": "tasks of each project's latest pre-annotation job, by state",
    "lwc_job_llm_calls": "LLM calls made by each project's latest job",
    "lwc_job_cached_outputs": "LLM outputs each project's latest job read from the score cache",
    "lwc_job_llm_cost": "what the LLM calls of each project's latest job cost, in the LLMs' cost unit",
    "lwc_job_active": "whether a pre-annotation job of the project is queued, running or paused",
    "lwc_job_info": "each project's latest job: status and target model version (value 1)",
}
LOOP_METRICS = {**PROJECT_METRICS, **JOB_METRICS}
STORE_COUNTERS = {
    "lwc_label_store_commits": "transactions of the label store's group commit (each stores the webhook events "
    "waiting for it)",
    "lwc_label_store_committed_events": "webhook events stored by the group commit (divided by "
    "lwc_label_store_commits_total: events per commit)",
}
HOLDOUT_KEYS = ("holdout_ace", "holdout_accuracy", "holdout_cost_per_item")
COST_DIGITS = 6
"""Significant digits of a job's cost: a sum of measured seconds, whose float noise past these means nothing."""


@dataclass(frozen=True)
class Gauge:
    """One gauge value: the metric's name, its labels (in order) and the value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: int | float


def project_gauges(loop: ProjectLoop, store: LabelStore) -> Iterator[Gauge]:
    """One project's gauges (of :data:`PROJECT_METRICS`); raises when the project's files cannot be read."""
    project = ("project", str(loop.number))
    counts = store.counts(loop.number)
    for source, n in counts["labels_by_source"].items():
        yield Gauge("lwc_labels", (project, ("source", str(source))), int(n))
    for band, n in routing_bands(loop, store).items():
        yield Gauge("lwc_tasks_in_band", (project, ("band", band)), int(n))
    statuses: dict[str, int] = {}
    for entry in loop.versions.list():
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    for status, n in sorted(statuses.items()):
        yield Gauge("lwc_model_versions", (project, ("status", status)), n)
    try:
        version = loop.versions.serving()
    except VersionError:
        return
    yield Gauge(
        "lwc_serving_version_info", (project, ("version", served_name(version)), ("file", version.name)), 1
    )
    for key in HOLDOUT_KEYS:
        value = version.metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            yield Gauge(f"lwc_serving_{key}", (project,), value)


def job_gauges(job: Job) -> Iterator[Gauge]:
    """A project's latest job's gauges (of :data:`JOB_METRICS`): tasks by state, LLM calls, outputs from the
    cache, cost, whether it is active, and its status and target version."""
    labels = (("project", str(job.project)), ("job", str(job.id)), ("kind", job.kind))
    pending = max(job.total - job.processed, 0)
    for state, n in (("total", job.total), ("done", job.done), ("skipped", job.skipped),
                     ("failed", job.failed), ("pending", pending)):  # fmt: skip
        yield Gauge("lwc_job_tasks", (*labels, ("state", state)), n)
    yield Gauge("lwc_job_llm_calls", labels, job.llm_calls)
    yield Gauge("lwc_job_cached_outputs", labels, job.cached)
    yield Gauge("lwc_job_llm_cost", labels, float(f"{job.llm_cost:.{COST_DIGITS}g}"))
    yield Gauge("lwc_job_active", (("project", str(job.project)),), int(job.active))
    yield Gauge("lwc_job_info", (*labels, ("status", job.status), ("version", job.target_version or "")), 1)


def loop_gauges(loops: Sequence[ProjectLoop], store: LabelStore, job_store: JobStore) -> list[Gauge]:
    """Every project's gauges, then every project's latest job's. A project whose files cannot be read loses its
    own values (logged), never the others' or ``/metrics``."""
    gauges: list[Gauge] = []
    for loop in loops:
        try:
            gauges += list(project_gauges(loop, store))
        except Exception:
            logger.exception("project %s: its metrics could not be read", loop.number)
    for loop in loops:
        try:
            job = job_store.latest(loop.number)
        except Exception:
            logger.exception("project %s: its job could not be read", loop.number)
            continue
        if job is not None:
            gauges += list(job_gauges(job))
    return gauges


def gauge_families(metrics: dict[str, str], gauges: Iterable[Gauge]) -> list[GaugeMetricFamily]:
    """One gauge family per metric of ``metrics`` (name -> help, in that order; one without values is still
    exposed, with its help and type) holding its values in the order given."""
    by_name: dict[str, list[Gauge]] = {name: [] for name in metrics}
    for gauge in gauges:
        by_name[gauge.name].append(gauge)
    families = []
    for name, help_text in metrics.items():
        values = by_name[name]
        label_names = [key for key, _ in values[0].labels] if values else []
        family = GaugeMetricFamily(name, help_text, labels=label_names)
        for gauge in values:
            # add_metric pairs the values with the family's label names, right or wrong
            if [key for key, _ in gauge.labels] != label_names:
                raise ValueError(f"{name}: labels {gauge.labels} differ from the first value's {label_names}")
            family.add_metric([value for _, value in gauge.labels], gauge.value)
        families.append(family)
    return families


class LoopMetricsCollector(Collector):
    """The learning loop's gauges (:data:`LOOP_METRICS`) for a prometheus_client registry, read at every scrape.

    Args:
        loops: the projects registered now (more register while the server runs).
        store: the label store (labels by source, predicted tasks' scores).
        job_store: the pre-annotation jobs.
    """

    def __init__(
        self, loops: Callable[[], Sequence[ProjectLoop]], store: LabelStore, job_store: JobStore
    ) -> None:
        self.loops = loops
        self.store = store
        self.job_store = job_store

    def describe(self) -> list[Metric]:
        # what the registry checks for names already taken at registration, without reading any project's files
        return [*gauge_families(LOOP_METRICS, []), *store_counters((0, 0))]

    def collect(self) -> list[Metric]:
        gauges = gauge_families(LOOP_METRICS, loop_gauges(self.loops(), self.store, self.job_store))
        return [*gauges, *store_counters(self.store.group_commit_counts())]


def store_counters(counts: tuple[int, int]) -> list[CounterMetricFamily]:
    """The label store's group-commit counters (:data:`STORE_COUNTERS`) from (commits, events)."""
    return [
        CounterMetricFamily(name, help_text, value=value)
        for (name, help_text), value in zip(STORE_COUNTERS.items(), counts, strict=True)
    ]
