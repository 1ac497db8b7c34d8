"""The learning loop's background work (ls_backend/server/background.py) and its /metrics text
(ls_backend/server/loop_metrics.py), on their own: no app, no LLM."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily

from ls_backend.loop.jobs import Job
from ls_backend.server.background import BackgroundWork
from ls_backend.server.loop_metrics import (
    JOB_METRICS,
    PROJECT_METRICS,
    Gauge,
    LoopMetricsCollector,
    gauge_families,
    job_gauges,
)
from ls_backend.server.telemetry import ServerMetrics
from tests.prometheus_text import metric_value


def wait_until(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_tasks_run_in_order_and_a_failing_one_costs_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    work = BackgroundWork(tick_s=0.05).start()
    done: list[int] = []

    def fail() -> None:
        raise RuntimeError("broken task")

    try:
        work.submit(lambda: done.append(1))
        work.submit(fail)
        work.submit(lambda: done.append(2))
        with caplog.at_level(logging.ERROR, logger="ls_backend.server.background"):
            assert work.wait_idle(5)
        assert done == [1, 2]
        (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
        assert record.exc_info is not None and "broken task" in str(record.exc_info[1])  # with its traceback
    finally:
        work.stop()


def test_periodic_tasks_run_while_tasks_keep_coming_and_delayed_ones_wait() -> None:
    work = BackgroundWork(tick_s=0.05)
    ticks: list[float] = []
    work.every_tick("counting ticks", lambda: ticks.append(time.monotonic()))
    work.start()
    try:
        busy_until = time.monotonic() + 0.5
        while time.monotonic() < busy_until:  # never a quiet tick: a task every 10 ms
            work.submit(lambda: time.sleep(0.01))
            time.sleep(0.01)
        assert work.wait_idle(5) and len(ticks) >= 4
        ran = threading.Event()
        asked = time.monotonic()
        work.submit_after(0.2, ran.set)
        assert ran.wait(5) and time.monotonic() - asked >= 0.2
    finally:
        work.stop()


class _Worker:
    def __init__(self, project: int) -> None:
        self.project = project
        self.started = self.woken = self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def wake(self) -> bool:
        self.woken += 1
        return False

    def stop(self, timeout: float | None = None) -> None:
        self.stopped += 1


def test_retrain_workers_are_started_woken_at_every_tick_and_stopped() -> None:
    work = BackgroundWork(tick_s=0.02).start()
    worker = _Worker(3)
    work.start_worker(worker)  # type: ignore[arg-type]
    work.start_worker(worker)  # type: ignore[arg-type]  # a second start of a running worker is harmless
    wait_until(lambda: worker.woken >= 3)
    work.stop()
    assert worker.started == 2 and worker.stopped == 1


def test_a_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick_s"):
        BackgroundWork(tick_s=0)


def exposed(families: list[GaugeMetricFamily]) -> str:
    """The text ``/metrics`` writes for these gauge families."""

    class Fixed:
        def collect(self) -> list[GaugeMetricFamily]:
            return families

    return generate_latest(Fixed()).decode()


def test_job_gauges_keep_the_names_labels_and_values_of_the_metrics_endpoint() -> None:
    version = 'v"1 with a \\ and a\nsecond line'  # escaped in the text, read back as it was
    job = Job(id=4, project=7, kind="prelabel", mode="missing", status="running", target_version=version,
              total=10, done=3, skipped=1, failed=1, llm_calls=5, cached=2, llm_cost=0.1234567)  # fmt: skip
    text = exposed(gauge_families(JOB_METRICS, job_gauges(job)))
    labels = {"project": "7", "job": "4", "kind": "prelabel"}
    assert metric_value(text, "lwc_job_tasks", **labels, state="pending") == 5
    assert metric_value(text, "lwc_job_llm_calls", **labels) == 5
    assert metric_value(text, "lwc_job_cached_outputs", **labels) == 2
    assert (
        metric_value(text, "lwc_job_llm_cost", **labels) == 0.123457
    )  # 6 significant digits of measured seconds
    assert metric_value(text, "lwc_job_active", project="7") == 1
    assert metric_value(text, "lwc_job_info", **labels, status="running", version=version) == 1
    empty = exposed(gauge_families(PROJECT_METRICS, []))
    assert empty.splitlines()[:2] == [
        "# HELP lwc_labels labeled tasks by why the label was asked for",
        "# TYPE lwc_labels gauge",
    ]
    assert len(empty.splitlines()) == 2 * len(PROJECT_METRICS)  # every header, even without values
    ace = exposed(
        gauge_families(PROJECT_METRICS, [Gauge("lwc_serving_holdout_ace", (("project", "7"),), 0.05)])
    )
    assert metric_value(ace, "lwc_serving_holdout_ace", project="7") == 0.05


def test_the_loop_collector_registers_without_reading_a_project_and_its_names_are_checked() -> None:
    def unreadable() -> list[Any]:
        raise AssertionError("the projects were read at registration")

    registry = ServerMetrics().registry
    registry.register(LoopMetricsCollector(unreadable, None, None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lwc_labels"):  # a second source of the same names
        registry.register(LoopMetricsCollector(unreadable, None, None))  # type: ignore[arg-type]
