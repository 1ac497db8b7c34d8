"""A small thread-safe metrics registry that renders the Prometheus text exposition format (version 0.0.4).

Counters and histograms with labels, enough for the server's ``/metrics``: requests by endpoint and status,
request latency, LLM calls and cost by LLM, predictions by confidence band.
"""

from __future__ import annotations

import bisect
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

DEFAULT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels_text(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{_escape(extra[1])}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric(ABC):
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        if not name.replace("_", "").isalnum() or name[0].isdigit():
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"metric {self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in self.label_names)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help_text)}", f"# TYPE {self.name} {self.kind}"]

    @abstractmethod
    def render(self) -> list[str]: ...


class Counter(_Metric):
    """A monotonically increasing value per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"counter {self.name} can only increase, got {amount}")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self._header() + [
            f"{self.name}{_labels_text(self.label_names, key)} {_format_number(v)}" for key, v in items
        ]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, label_names)
        edges = [float(b) for b in buckets]
        if not edges or sorted(edges) != edges or len(set(edges)) != len(edges):
            raise ValueError(f"histogram {name}: buckets must be strictly increasing, got {list(buckets)}")
        self.buckets = tuple(edges)
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        slot = bisect.bisect_left(self.buckets, value)  # first bucket with value <= le
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[slot] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), []))

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        lines = self._header()
        for key, counts, total in items:
            cumulative = 0
            for edge, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                labels = _labels_text(self.label_names, key, ("le", _format_number(edge)))
                lines.append(f"{self.name}_bucket{labels} {cumulative}")
            plain = _labels_text(self.label_names, key)
            lines.append(f"{self.name}_sum{plain} {_format_number(total)}")
            lines.append(f"{self.name}_count{plain} {cumulative}")
        return lines


class Registry:
    """The metrics of one server; ``render()`` is the body of ``GET /metrics``."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, label_names)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help_text, label_names, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        return "\n".join(line for m in metrics for line in m.render()) + "\n"


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
    """The metrics the server exports, on their own registry."""

    def __init__(self, band_edges: Sequence[float] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> None:
        edges = [float(e) for e in band_edges]
        if len(edges) < 2 or sorted(edges) != edges or len(set(edges)) != len(edges):
            raise ValueError(
                f"confidence band edges must be at least 2 increasing numbers, got {list(band_edges)}"
            )
        self.band_edges = tuple(edges)
        self.registry = Registry()
        self.requests = self.registry.counter(
            "lwc_http_requests_total", "HTTP requests by endpoint and status code", ("endpoint", "status")
        )
        self.latency = self.registry.histogram(
            "lwc_http_request_duration_seconds", "HTTP request latency by endpoint", ("endpoint",)
        )
        self.llm_calls = self.registry.counter(
            "lwc_llm_calls_total", "texts sent to each LLM (score cache misses)", ("llm",)
        )
        self.llm_cost = self.registry.counter(
            "lwc_llm_cost_total", "cost of LLM calls, in each LLM's configured unit", ("llm",)
        )
        self.cache_hits = self.registry.counter(
            "lwc_llm_cache_hits_total", "LLM outputs taken from the score cache instead of a call", ("llm",)
        )
        self.depth = self.registry.counter(
            "lwc_cascade_depth_total", "predictions by how many LLMs the cascade asked", ("depth",)
        )
        self.answered_by = self.registry.counter(
            "lwc_answered_by_total",
            "predictions by the cascade member asked last (the student, member 0 when a project has one, or an LLM)",
            ("member",),
        )
        self.predictions = self.registry.counter(
            "lwc_predictions_total",
            "predictions by confidence band ('none': task left without a label)",
            ("band",),
        )

    def record_prediction(self, score: float | None) -> None:
        self.predictions.inc(band=confidence_band(score, self.band_edges))
