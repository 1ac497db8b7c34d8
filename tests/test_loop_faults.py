"""Fault tests: a retrain killed with SIGKILL mid-tuning, and 200 concurrent webhooks while a retrain runs in
another process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ls_backend.loop import LabelStore, LoopConfig, ServingModel, VersionStore, retrain
from ls_backend.loop.simulation import synthetic_project
from ls_backend.loop.trainer import lock_is_free, read_retrain_status

N_ITEMS = 1500
REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys
from ls_backend.loop import LabelStore, LoopConfig, VersionStore, retrain
from ls_backend.loop.simulation import synthetic_project
project = synthetic_project({n}, seed=4)
config = LoopConfig(n_trials=100_000, n_splits=2, tuning_timeout_s=None)
result = retrain(1, LabelStore(sys.argv[1]), VersionStore(sys.argv[2], 1), project.score_fn, config)
print(result.status, result.reason)
"""


def start_retrain_process(db: Path, models: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD.format(n=N_ITEMS), str(db), str(models)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_stage(
    versions: VersionStore, stage: str, child: subprocess.Popen[str], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_retrain_status(versions)
        if status and status.get("stage") == stage and status.get("pid") == child.pid:
            return
        if child.poll() is not None:
            raise AssertionError(
                f"the retrain process ended early: {child.stdout.read() if child.stdout else ''}"
            )
        time.sleep(0.05)
    raise AssertionError(f"the retrain never reached stage {stage!r}")


@pytest.fixture
def setup(tmp_path: Path):
    project = synthetic_project(N_ITEMS, seed=4)
    store = LabelStore(tmp_path / "labels.db")
    versions = VersionStore(tmp_path / "models", 1)
    versions.ensure_initial(ServingModel.out_of_task(project.llms, project.classes))
    for position in range(1000):
        store.record_event(project.annotation_payload(position, position + 1))
    return project, store, versions, tmp_path


def test_a_retrain_killed_mid_tuning_loses_nothing(setup) -> None:
    project, store, versions, tmp_path = setup
    serving_before = versions.serving().name
    labels_before = store.labels(1)
    child = start_retrain_process(tmp_path / "labels.db", tmp_path / "models")
    try:
        wait_for_stage(versions, "tuning", child)
        assert not lock_is_free(versions.lock_path)
        busy = retrain(1, store, versions, project.score_fn, LoopConfig(n_trials=2))
        assert busy.status == "busy"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert lock_is_free(versions.lock_path)  # the OS released it
    assert versions.serving().name == serving_before  # the serving version keeps serving
    assert versions.names() == [serving_before]  # no half-written version
    assert not list(versions.versions_dir.glob("v*.json.tmp*"))
    after = store.labels(1)
    assert np.array_equal(after.task_ids, labels_before.task_ids)
    assert np.array_equal(after.labels, labels_before.labels)
    result = retrain(1, store, versions, project.score_fn, LoopConfig(n_trials=5, n_splits=2))
    assert result.status == "promoted", result.reason
    assert versions.serving().name == result.version


def test_200_concurrent_webhooks_while_a_retrain_runs_elsewhere(setup) -> None:
    project, store, versions, tmp_path = setup
    child = start_retrain_process(tmp_path / "labels.db", tmp_path / "models")
    latencies: list[float] = []
    outcomes: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    try:
        wait_for_stage(versions, "tuning", child)
        barrier = threading.Barrier(200)

        def deliver(position: int) -> None:
            payload = project.annotation_payload(position, position + 1)
            barrier.wait()
            started = time.perf_counter()
            try:
                outcome = store.record_event(payload)
            except BaseException as e:
                with lock:
                    errors.append(e)
                return
            with lock:
                latencies.append(time.perf_counter() - started)
                outcomes.append(outcome.outcome)

        threads = [threading.Thread(target=deliver, args=(1000 + i,)) for i in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert child.poll() is None, "the retrain should still be running"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert not errors
    assert outcomes.count("applied") == 200
    assert len(store.labels(1)) == 1200  # every one stored and applied
    assert store.counts(1)["events"]["webhook"] == 1200
    p99 = float(np.percentile(latencies, 99))
    print(f"200 concurrent record_event: p50 {np.median(latencies) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    assert p99 < 1.0
