"""Pre-annotation jobs on RQ, end to end: a real redis-server (``redis_server`` of conftest.py, Debian's
package), a real Label Studio 1.23.2, ``lwc serve`` with ``loop.job_backend: rq`` and an ``lwc worker`` process
with a model directory of its own (as on another machine: its own score cache and job state).

``lwc prelabel`` asks the server, which enqueues the job; the worker runs it (the same ``run_job``) and mirrors
its progress into the RQ job, which the server reads for ``/jobs``, the CLI's progress bar and ``/status``; at
the end the server stores the predicted tasks' scores in its label store. Every task ends with exactly one
prediction of the version the server serves, and a second job finds nothing to do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from label_studio_sdk.client import LabelStudio

from tests.conftest import REPO_ROOT, free_port, launch_backend, lwc_command, stop_backend
from tests.test_prelabel_e2e import new_project, predictions_by_task

pytestmark = pytest.mark.e2e
N_TASKS = 40


def test_a_job_runs_on_an_rq_worker(
    label_studio: Any, redis_server: str, tiny_llm_dirs: list[Path], oot_table: Path, tmp_path: Path
) -> None:
    llms = [
        {"name": "tiny-a", "kind": "hf", "model": str(tiny_llm_dirs[0]), "batch_size": 16},
        {"name": "tiny-b", "kind": "hf", "model": str(tiny_llm_dirs[1]), "batch_size": 16},
    ]
    common = {"llms": llms, "oot_scores": str(oot_table), "question": "Is this SMS message spam?",
              "cascade": {"similar_tasks": False}}  # fmt: skip
    server_config = tmp_path / "server.yaml"
    server_config.write_text(
        yaml.safe_dump({**common, "loop": {"job_backend": "rq", "redis_url": redis_server, "poll_s": 0.5}})
    )
    worker_config = tmp_path / "worker.yaml"
    worker_config.write_text(yaml.safe_dump({**common, "loop": {"job_batch_size": 8}}))
    backend = launch_backend(
        server_config, tmp_path / "server-models", free_port(), label_studio, tmp_path / "s.log"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LWC_CONFIG", "LWC_MODEL_DIR")}
    env.update(
        LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token,
        LWC_MODEL_DIR=str(tmp_path / "worker-models"), OMP_NUM_THREADS="1",
    )  # fmt: skip
    worker_log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [*lwc_command(), "worker", "--redis", redis_server, "--config", str(worker_config)],
        env=env, cwd=REPO_ROOT, stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
        project, task_ids, _ = new_project(client, backend.url, "prelabel on rq", N_TASKS)
        done = subprocess.run(
            [*lwc_command(), "prelabel", "--project", str(project.id), "--server", backend.url],
            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        assert f"{N_TASKS}/{N_TASKS}" in done.stderr
        job_id = int(re.search(r"job (\d+) started", done.stdout).group(1))  # type: ignore[union-attr]
        with urllib.request.urlopen(f"{backend.url}/jobs/{job_id}", timeout=10) as response:
            job = json.loads(response.read())["job"]
        assert job["backend"] == "rq" and job["status"] == "done" and job["done"] == N_TASKS
        assert job["external_id"] == f"lwc-job-{project.id}-{job_id}"
        per_task = predictions_by_task(client, project.id)
        assert sorted(per_task) == sorted(task_ids)
        assert all(c == Counter({job["target_version"]: 1}) for c in per_task.values())
        assert (
            job["target_version"] == client.ml.get(id=client.ml.list(project=project.id)[0].id).model_version
        )
        with urllib.request.urlopen(f"{backend.url}/status?project={project.id}", timeout=10) as response:
            bands = json.loads(response.read())["bands"]
        assert sum(bands.values()) == N_TASKS  # the worker's predictions reached the server's label store
        assert "run_queued_job" in (tmp_path / "worker.log").read_text()

        again = subprocess.run(
            [*lwc_command(), "prelabel", "--project", str(project.id), "--server", backend.url],
            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"0 predicted, {N_TASKS} skipped" in again.stdout
        assert predictions_by_task(client, project.id) == per_task
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # say where it is stuck (its stacks go to its log), then end it
            worker.send_signal(signal.SIGUSR1)
            time.sleep(2)
            worker.kill()
            worker.wait(timeout=30)
            raise AssertionError(
                "the worker did not stop within 30 s of SIGTERM:\n"
                + (tmp_path / "worker.log").read_text()[-6000:]
            ) from None
        finally:
            worker_log.close()
        stop_backend(backend.process)
