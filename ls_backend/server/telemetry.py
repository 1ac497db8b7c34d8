"""The server's own metrics for ``/metrics``, on prometheus_client: requests by endpoint and status, request
latency, LLM calls, cost and cache hits by LLM, cascade depth, the member that answered, predictions by
confidence band.

Each app has its own registry (:attr:`ServerMetrics.registry`), never prometheus_client's process-wide default:
several apps in one process (the tests, a program embedding the backend) keep their counts apart, and ``/metrics``
shows this server's series only. The learning loop's gauges join that registry as a collector
(:mod:`ls_backend.server.loop_metrics`).
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds, from a webhook's few milliseconds to a /predict batch that waits on a deep cascade (Label Studio gives
/predict 100 s)."""


class RegistryWithoutCreatedSeries(CollectorRegistry):
    """A registry whose collection leaves out the ``*_created`` series prometheus_client adds to every counter and
    histogram.

    In the text format each is a gauge of its own per label combination (as many series again as the counters),
    which Prometheus stores as plain values, not as the series' start. prometheus_client only drops them for the
    whole process (``disable_created_metrics``), which would change the series of every other registry of the
    process too; filtering here keeps the choice to this server's registry.
    """

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            created = metric.name + "_created"
            if any(sample.name == created for sample in metric.samples):
                metric = copy.copy(metric)  # the collector's object stays as it made it
                metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


def confidence_band(score: float | None, edges: Sequence[float]) -> str:
    """The band ``"[lo,hi)"`` of ``edges`` that holds a confidence score (the last band is closed); ``"none"``
    for a task without a prediction."""
    if score is None or math.isnan(score):
        return "none"
    slot = min(max(bisect.bisect_right(edges, score) - 1, 0), len(edges) - 2)
    lo, hi = edges[slot], edges[slot + 1]
    closing = "]" if slot == len(edges) - 2 else ")"
    return f"[{lo:g},{hi:g}{closing}"


class ServerMetrics:
    """The metrics the server exports, on their own registry (``generate_latest(registry)`` is ``/metrics``)."""

    def __init__(self, band_edges: Sequence[float] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> None:
        edges = [float(e) for e in band_edges]
        if len(edges) < 2 or sorted(edges) != edges or len(set(edges)) != len(edges):
            raise ValueError(
                f"confidence band edges must be at least 2 increasing numbers, got {list(band_edges)}"
            )
        self.band_edges = tuple(edges)
        self.registry = registry = RegistryWithoutCreatedSeries()
        # counters are named as exposed, "_total" included (prometheus_client strips and re-adds it)
        self.requests = Counter(
            "lwc_http_requests_total",
            "HTTP requests by endpoint and status code",
            ("endpoint", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "lwc_http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.llm_calls = Counter(
            "lwc_llm_calls_total", "texts sent to each LLM (score cache misses)", ("llm",), registry=registry
        )
        self.llm_cost = Counter(
            "lwc_llm_cost_total",
            "cost of LLM calls, in each LLM's configured unit",
            ("llm",),
            registry=registry,
        )
        self.cache_hits = Counter(
            "lwc_llm_cache_hits_total",
            "LLM outputs taken from the score cache instead of a call",
            ("llm",),
            registry=registry,
        )
        self.depth = Counter(
            "lwc_cascade_depth_total",
            "predictions by how many LLMs the cascade asked",
            ("depth",),
            registry=registry,
        )
        self.answered_by = Counter(
            "lwc_answered_by_total",
            "predictions by the cascade member asked last (the student, member 0 when a project has one, or an LLM)",
            ("member",),
            registry=registry,
        )
        self.predictions = Counter(
            "lwc_predictions_total",
            "predictions by confidence band ('none': task left without a label)",
            ("band",),
            registry=registry,
        )

    def record_prediction(self, score: float | None) -> None:
        self.predictions.labels(band=confidence_band(score, self.band_edges)).inc()
