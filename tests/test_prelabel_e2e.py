"""Pre-annotation jobs end to end: a real Label Studio 1.23.2 (the session's ``label_studio`` fixture), ``lwc
serve`` in a subprocess (killed with SIGKILL in the middle of a job and started again) and ``lwc prelabel``.

- ``lwc prelabel`` pre-annotates an imported project with one command and a progress bar; the backend is killed
  (kill -9) mid-job and restarted, resumes the job, and every task ends with exactly one prediction of the
  serving version (read back through label-studio-sdk);
- annotations and START_TRAINING promote a retrained version: a refresh job re-predicts every task with it and
  reports its LLM calls (only what the new policy sends deeper is new); the "Needs review" view follows the new
  scores; ``lwc rollback`` refreshes back without a single LLM call and without duplicates;
- Label Studio stopped (SIGSTOP) in the middle of a job: the job pauses, and completes once it answers again.

Fast configuration: two tiny random-weight LLMs (``tiny_llm_dirs`` of conftest.py; Label Studio does not care
what they know) with the synthetic out-of-task table, jobs of 5 tasks per batch (so that a kill finds a job
half done), and the retrain settings of tests/test_learning_e2e.py that let ~40 labels promote a version.
"""

from __future__ import annotations

import json
import os
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

from ls_backend.datasets import load_sms_spam
from ls_backend.loop import VersionStore
from tests.conftest import free_port, launch_backend, lwc_command, stop_backend
from tests.prometheus_text import metric_value

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TASKS = 200
N_LABELS = 40


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def backend_config(
    tmp_path_factory: pytest.TempPathFactory, tiny_llm_dirs: list[Path], oot_table: Path
) -> Path:
    config = {
        "llms": [
            {"name": "tiny-a", "kind": "hf", "model": str(tiny_llm_dirs[0]), "batch_size": 16},
            {"name": "tiny-b", "kind": "hf", "model": str(tiny_llm_dirs[1]), "batch_size": 16},
        ],
        "oot_scores": str(oot_table),
        # a fixed question: the prompts (so the score cache's keys) stay the same before and after the project's
        # description arrives from Label Studio
        "question": "Is this SMS message spam?",
        "cascade": {"similar_tasks": False},
        "loop": {
            "job_batch_size": 5,
            "review_threshold": 0.5,
            "retrain_every": 0,
            "min_train_labels": 10,
            "min_calibration_labels": 10,
            "holdout_fraction": 0.25,
            "min_holdout_labels": 3,
            "accuracy_tolerance": 1.0,
            "ace_tolerance": 1.0,
            "n_trials": 20,
            "poll_s": 0.5,
            "catch_up_retry_s": 2.0,
        },
    }
    path = tmp_path_factory.mktemp("prelabel-config") / "backend.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def new_project(
    client: LabelStudio, backend_url: str, title: str, n: int
) -> tuple[Any, list[int], list[str]]:
    records = [r for r in load_sms_spam() if r.text.strip()][:n]
    config = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
    project = client.projects.create(
        title=title, label_config=config, description="Is this SMS message spam?"
    )
    imported = client.projects.import_tasks(
        id=project.id, request=[{"text": r.text} for r in records], return_task_ids=True
    )
    ml = client.ml.create(url=backend_url, project=project.id, title="label-with-confidence")
    assert ml.readable_state == "Connected", ml.error_message
    truth = {"spam": "yes", "ham": "no"}
    return project, list(imported.task_ids or []), [truth[r.label] for r in records]


def predictions_by_task(client: LabelStudio, project: int) -> dict[int, Counter[str]]:
    found: dict[int, Counter[str]] = {}
    for prediction in client.predictions.list(project=project):
        found.setdefault(prediction.task, Counter())[prediction.model_version] += 1
    return found


def lwc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lwc_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def test_prelabel_survives_a_kill_and_refreshes_after_promotion_and_rollback(
    label_studio: Any, backend_config: Path, tmp_path: Path
) -> None:
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    model_dir, log_path, port = tmp_path / "models", tmp_path / "backend.log", free_port()
    backend = launch_backend(backend_config, model_dir, port, label_studio, log_path)
    cli: Any = None
    try:
        project, task_ids, labels = new_project(client, backend.url, "prelabel e2e", N_TASKS)
        # one command, which follows the job through the kill and the restart
        bar = (tmp_path / "prelabel.err").open("w")
        cli = subprocess.Popen(
            [*lwc_command(), "prelabel", "--project", str(project.id), "--server", backend.url, "--interval", "0.1"],
            stdout=subprocess.PIPE, stderr=bar, text=True, cwd=REPO_ROOT,
        )  # fmt: skip
        job = wait_for(
            lambda: (
                (jobs := get_json(f"{backend.url}/jobs?project={project.id}")["jobs"])
                and jobs[0]["done"] >= 40
                and jobs[0]
            ),
            120,
            "40 tasks predicted",
            interval=0.02,
        )
        job_id = job["id"]
        backend.process.send_signal(signal.SIGKILL)  # kill -9, mid-job
        backend.process.wait()
        assert job["status"] == "running" and job["done"] < N_TASKS, job
        half = predictions_by_task(client, project.id)
        assert 40 <= len(half) < N_TASKS and all(sum(c.values()) == 1 for c in half.values())
    except BaseException:
        if cli is not None and cli.poll() is None:
            cli.kill()
        stop_backend(backend.process)
        raise

    # the restarted backend resumes the job by itself; the same `lwc prelabel` follows it to the end
    backend = launch_backend(backend_config, model_dir, port, label_studio, log_path)
    try:
        out, _ = cli.communicate(timeout=300)
        bar.close()
        stderr = (tmp_path / "prelabel.err").read_text()
        assert cli.returncode == 0, out + stderr
        assert f"{N_TASKS}/{N_TASKS}" in stderr and "task/s" in stderr  # the tqdm bar
        assert "the server does not answer; waiting for it" in stderr
        assert f"job {job_id} (prelabel, missing) done: {N_TASKS} tasks" in out
        resumed = get_json(f"{backend.url}/jobs/{job_id}")["job"]
        assert resumed["status"] == "done" and resumed["attempts"] == 2, resumed
        assert resumed["done"] == N_TASKS and resumed["failed"] == 0
        version = resumed["target_version"]
        per_task = predictions_by_task(client, project.id)
        assert sorted(per_task) == sorted(task_ids)
        assert all(c == Counter({version: 1}) for c in per_task.values()), "exactly one prediction per task"
        status = lwc("status", "--model-dir", str(model_dir), "--project", str(project.id))
        assert f"latest job {job_id} (prelabel, missing): done, {N_TASKS} of {N_TASKS} tasks" in status.stdout
        metrics = urllib.request.urlopen(f"{backend.url}/metrics", timeout=10).read().decode()
        job_labels = {"project": str(project.id), "job": str(job_id), "kind": "prelabel"}
        assert metric_value(metrics, "lwc_job_tasks", **job_labels, state="done") == N_TASKS
        # the job's own predictions are booked as /predict's are: /explain says which LLMs answered each task
        # the restarted server predicted (exactly those Label Studio did not hold at the kill), /metrics counts them
        explained = get_json(f"{backend.url}/explain?project={project.id}")["predictions"]
        assert sorted(int(d["task"]) for d in explained) == sorted(set(task_ids) - set(half))
        assert all(d["llms_asked"] and d["model_version"] == version for d in explained)
        assert "lwc_llm_calls_total{" in metrics or "lwc_llm_cache_hits_total{" in metrics

        # labels, START_TRAINING, a promoted version: a refresh job re-predicts every task with it
        for task_id, label in list(zip(task_ids, labels, strict=True))[:N_LABELS]:
            client.annotations.create(
                id=task_id,
                result=[
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ],
            )
        versions = VersionStore(model_dir, project.id)
        wait_for(lambda: versions.serving().status == "initial", 30, "the initial version")
        ml = client.ml.list(project=project.id)[0]
        client.ml.train(id=ml.id)
        promoted = wait_for(
            lambda: versions.serving() if versions.serving().status == "promoted" else None,
            120,
            "a promotion",
        )
        refresh = wait_for(
            lambda: next(
                (j for j in get_json(f"{backend.url}/jobs?project={project.id}")["jobs"]
                 if j["kind"] == "refresh" and j["status"] == "done"), None,
            ),
            180,
            "the refresh job",
            interval=0.5,
        )  # fmt: skip
        assert refresh["target_version"] == promoted.name and refresh["trigger"] == f"promote {promoted.name}"
        assert refresh["done"] == N_TASKS and refresh["failed"] == 0
        # with 30 training labels (at least loop.student_min_labels) the promoted version has the student as its
        # member 0, and the refreshed predictions name it: it answered some tasks alone, and went first on all
        assert promoted.model.student is not None and promoted.model.llms[0] == "student", promoted.model.llms
        explained = get_json(f"{backend.url}/explain?project={project.id}")["predictions"]
        refreshed = [d for d in explained if d["model_version"] == promoted.name]
        assert refreshed and all(d["llms_asked"][0] == "student" for d in refreshed)
        print(
            f"student alone answered {sum(d['llms_asked'] == ['student'] for d in refreshed)} of {len(refreshed)}"
        )
        print(
            f"\nrefresh after promoting {promoted.name}: {refresh['done']} tasks re-predicted, "
            f"{refresh['llm_calls']} LLM calls, {refresh['cached']} outputs from the score cache"
        )
        # cached outputs answer every item the old policy had asked about; new calls only where it goes deeper (the
        # student, member 0 now, answers some tasks with no LLM at all)
        assert 0 <= refresh["llm_calls"] <= N_TASKS and refresh["cached"] > 0
        per_task = predictions_by_task(client, project.id)
        assert all(c == Counter({version: 1, promoted.name: 1}) for c in per_task.values())
        # the project's model version, and so the "Needs review" view, follow the refreshed scores
        wait_for(
            lambda: client.projects.get(id=project.id).model_version == promoted.name, 30, "model version"
        )
        scores = {p.task: p.score for p in client.predictions.list(project=project.id)
                  if p.model_version == promoted.name}  # fmt: skip
        (review,) = [
            v for v in client.views.list(project=project.id) if (v.data or {}).get("title") == "Needs review"
        ]
        in_view = {t.id for t in client.tasks.list(project=project.id, view=review.id)}
        assert in_view == {t for t, s in scores.items() if s < 0.5}
        bands = get_json(f"{backend.url}/status?project={project.id}")["bands"]
        assert bands["review"] == len(in_view)

        # a rollback refreshes back to the out-of-task version: everything cached, nothing created twice
        rolled = lwc("rollback", "--model-dir", str(model_dir), "--project", str(project.id))
        assert rolled.returncode == 0, rolled.stderr
        back = wait_for(
            lambda: next(
                (j for j in get_json(f"{backend.url}/jobs?project={project.id}")["jobs"]
                 if j["kind"] == "refresh" and j["target_version"] == version and j["status"] == "done"), None,
            ),
            120,
            "the refresh after the rollback",
            interval=0.5,
        )  # fmt: skip
        assert back["llm_calls"] == 0 and back["done"] == 0 and back["skipped"] == N_TASKS
        per_task = predictions_by_task(client, project.id)
        assert all(c == Counter({version: 1, promoted.name: 1}) for c in per_task.values())
        wait_for(
            lambda: client.projects.get(id=project.id).model_version == version, 30, "model version back"
        )
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        stop_backend(backend.process)


def test_a_job_pauses_while_label_studio_is_stopped_and_completes_after(
    label_studio: Any, backend_config: Path, tmp_path: Path
) -> None:
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    backend = launch_backend(
        backend_config, tmp_path / "models", free_port(), label_studio, tmp_path / "b.log"
    )
    try:
        project, task_ids, _ = new_project(client, backend.url, "prelabel pause e2e", 60)
        reply = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{backend.url}/jobs/prelabel",
                    data=json.dumps({"project": project.id}).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                ),
                timeout=10,
            ).read()
        )
        job_id = reply["job"]["id"]
        wait_for(lambda: get_json(f"{backend.url}/jobs/{job_id}")["job"]["done"] >= 10, 60, "a few batches")
        os.killpg(label_studio.pid, signal.SIGSTOP)  # Label Studio stops answering (connections hang)
        try:
            paused = wait_for(
                lambda: (j := get_json(f"{backend.url}/jobs/{job_id}")["job"])["status"] == "paused" and j,
                60,
                "the job to pause",
                interval=0.5,
            )
        finally:
            os.killpg(label_studio.pid, signal.SIGCONT)
        assert paused["note"].startswith("paused: ") and "next try in" in paused["note"]
        done = wait_for(
            lambda: (j := get_json(f"{backend.url}/jobs/{job_id}")["job"])["status"] == "done" and j,
            120,
            "the job to complete",
            interval=0.5,
        )
        assert done["done"] == 60 and done["failed"] == 0
        per_task = predictions_by_task(client, project.id)
        assert sorted(per_task) == sorted(task_ids)
        assert all(c == Counter({done["target_version"]: 1}) for c in per_task.values())
    finally:
        stop_backend(backend.process)
