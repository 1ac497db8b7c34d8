#!/usr/bin/env python
"""Pre-annotation jobs against a real Label Studio 1.23.2: a 1,000-task project with one command (killed with
SIGKILL and resumed), the job's overhead against raw LLM time, predictions created per second with every LLM
output cached, and /predict latency while a job runs.

::

    .venv/bin/python scripts/bench_prelabel.py [--config tests/fixtures/demo_smollm2.yaml] [--tasks 1000]
        [--kill-at 400] [--refresh-labels 40] [--overhead-tasks 150] [--repeat 2] [--batch-sizes 10,50,250]
        [--skip STEPS] [--out FILE.json]

1. **1,000 tasks, kill -9, resume**: a project of ``--tasks`` real SMS texts, one ``lwc prelabel`` (its progress
   bar goes to the log), the backend killed with SIGKILL once ``--kill-at`` tasks are done and restarted, while
   the same ``lwc prelabel`` waits for it and follows the resumed job to its end; then every task is checked to
   hold exactly one prediction of the serving version.
1b. **Refresh after a promotion**: ``--refresh-labels`` true labels as annotations, START_TRAINING, the promoted
   version (the guard's tolerances wide open for this project), and the refresh job it starts: tasks
   re-predicted, LLM calls (only what the new policy asks of an LLM that never saw a text), outputs from the score
   cache, and each task's predictions by version.
2. **Overhead**: ``--overhead-tasks`` texts nobody scored yet go through the job (wall time from the job's start
   to its end, Label Studio included) and, separately, through the same LLM with the same prompt in this process
   (``score_items``, no cache, one torch thread like the server): the job's wall time over the raw LLM time, minus
   one. ``--repeat`` pairs of fresh texts, raw and job interleaved. The job also reports the measured time of
   its own LLM calls (``llm_cost``): its wall time over that, minus one, is the overhead seen from inside.
3. **Cached throughput**: new projects with the texts of step 1 (every LLM output in the score cache, checked: no
   LLM call), one job per batch size: tasks per second, and the job's own split of its time between the cascade
   (``llm_seconds``: cache lookups, calibration, policy) and Label Studio's API (``label_studio_seconds``).
4. **Interactive latency**: ``/predict`` of one new text, 8 times idle and 8 times while a job scores fresh texts.

Everything runs on this machine (Label Studio, the backend, the client); report the load average with it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.server.jobs import DEFAULT_BATCH_SIZE  # noqa: E402
from tests.conftest import free_port, launch_backend, lwc_command, stop_backend  # noqa: E402

QUESTION = "Is this SMS message spam?"
# the 1,000-task project retrains on a few labels and promotes what it trains (the guard's tolerances are wide
# open), so that the refresh after a promotion is measured on it; the other projects never retrain
REFRESH_LOOP = {
    "refresh_on_promotion": True, "retrain_every": 0, "min_train_labels": 10, "min_calibration_labels": 10,
    "holdout_fraction": 0.25, "min_holdout_labels": 3, "accuracy_tolerance": 1.0, "ace_tolerance": 1.0,
    "n_trials": 20,
}  # fmt: skip


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_job(backend: str, job_id: int, timeout: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(f"{backend}/jobs/{job_id}")["job"]
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not end")


def sms_texts() -> tuple[list[str], dict[str, str]]:
    """The SMS set's distinct texts, and each one's true answer to QUESTION (``yes``: spam)."""
    from ls_backend.datasets import load_sms_spam

    seen, texts, truth = set(), [], {}
    for record in load_sms_spam():
        text = record.text.strip()
        if text and text not in seen:
            seen.add(text)
            texts.append(record.text)
            truth[record.text] = "yes" if record.label == "spam" else "no"
    return texts, truth


class Bench:
    def __init__(self, args: argparse.Namespace, ls: Any, folder: Path) -> None:
        from label_studio_sdk.client import LabelStudio

        self.args, self.ls, self.folder = args, ls, folder
        self.client = LabelStudio(base_url=ls.url, api_key=ls.token, timeout=120)
        self.model_dir, self.log = folder / "models", folder / "backend.log"
        self.port = free_port()
        self.config = folder / "backend.yaml"
        import yaml

        config = yaml.safe_load(Path(args.config).read_text())
        config["question"] = QUESTION  # the same prompt before and after the description arrives
        config.setdefault("loop", {})["refresh_on_promotion"] = False
        # a project may lower the job batch size only up to the server's (docs/server.md, "Who may set what"):
        # the server allows the largest one measured, each project sets its own (the default, 50, but in step 3)
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        config["loop"]["job_batch_size"] = max([*sizes, DEFAULT_BATCH_SIZE])
        self.config.write_text(yaml.safe_dump(config))
        self.backend = self.start()

    def start(self) -> Any:
        return launch_backend(self.config, self.model_dir, self.port, self.ls, self.log, timeout=900)

    def project(
        self,
        title: str,
        texts: list[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        loop: dict[str, Any] | None = None,
    ) -> int:
        config = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
        project = self.client.projects.create(title=title, label_config=config, description=QUESTION)
        for start in range(0, len(texts), 500):
            self.client.projects.import_tasks(
                id=project.id, request=[{"text": t} for t in texts[start : start + 500]]
            )
        ml = self.client.ml.create(url=self.backend.url, project=project.id, title="label-with-confidence",
                                   extra_params={"loop": {"job_batch_size": batch_size, **(loop or {})}})  # fmt: skip
        assert ml.readable_state == "Connected", ml.error_message
        return int(project.id)

    def per_task(self, project: int) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for p in self.client.predictions.list(project=project):
            found.setdefault(p.task, []).append(p.model_version)
        return found

    # ---- 1. a 1,000-task project, killed and resumed

    def thousand(self, texts: list[str]) -> dict[str, Any]:
        project = self.project("bench: 1000 tasks", texts, loop=REFRESH_LOOP)
        self.thousand_project = project
        bar_log = (self.folder / "prelabel-1.log").open("w")
        started = time.perf_counter()
        cli = subprocess.Popen([*lwc_command(), "prelabel", "--project", str(project), "--server", self.backend.url],
                               stdout=bar_log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)  # fmt: skip
        job_id = None
        while job_id is None:
            jobs = get(f"{self.backend.url}/jobs?project={project}")["jobs"]
            job_id = jobs[0]["id"] if jobs else None
            time.sleep(0.1)
        while (job := get(f"{self.backend.url}/jobs/{job_id}")["job"])["done"] < self.args.kill_at:
            time.sleep(0.1)
        self.backend.process.send_signal(signal.SIGKILL)
        self.backend.process.wait()
        killed_at = time.perf_counter() - started
        predicted_before = len(self.per_task(project))
        self.backend = self.start()
        restarted = time.perf_counter() - started
        cli.wait()  # the same command follows the job through the kill and the restart
        final = get(f"{self.backend.url}/jobs/{job_id}")["job"]
        per_task = self.per_task(project)
        counts = sorted({len(v) for v in per_task.values()})
        return {
            "tasks": len(texts), "job": job_id, "killed_after_s": round(killed_at, 1),
            "done_when_killed": job["done"], "predictions_in_label_studio_when_killed": predicted_before,
            "backend_restarted_after_s": round(restarted, 1), "cli_exit": cli.returncode,
            "total_s": round(time.perf_counter() - started, 1), "status": final["status"],
            "attempts": final["attempts"], "llm_calls": final["llm_calls"], "cached": final["cached"],
            "tasks_with_a_prediction": len(per_task), "predictions_per_task": counts,
            "versions": sorted({v for vs in per_task.values() for v in vs}),
            "cli_last_lines": (self.folder / "prelabel-1.log").read_text().replace("\r", "\n").strip()
            .splitlines()[-2:],
        }  # fmt: skip

    # ---- 1b. the refresh after a promotion

    def refresh(self, project: int, texts: list[str], truth: dict[str, str]) -> dict[str, Any]:
        from ls_backend.loop import VersionStore

        versions = VersionStore(self.model_dir, project)
        before = versions.serving()
        tasks = {t.id: t.data["text"] for t in self.client.tasks.list(project=project, fields="all")}
        labeled = list(tasks.items())[: self.args.refresh_labels]
        started = time.perf_counter()
        for task_id, text in labeled:
            self.client.annotations.create(id=task_id, result=[{
                "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [truth[text]]},
            }])  # fmt: skip
        (ml,) = self.client.ml.list(project=project)
        self.client.ml.train(id=ml.id)  # START_TRAINING
        deadline = time.monotonic() + 900
        while (serving := versions.serving()).name == before.name:
            if time.monotonic() > deadline:
                raise TimeoutError("no promotion within 900 s")
            time.sleep(0.5)
        promoted_at = time.perf_counter() - started
        job = None
        while job is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no refresh job within 900 s")
            jobs = get(f"{self.backend.url}/jobs?project={project}")["jobs"]
            job = next((j for j in jobs if j["kind"] == "refresh"), None)
            time.sleep(0.5)
        job = wait_job(self.backend.url, job["id"])
        per_task = self.per_task(project)
        return {
            "labels": len(labeled), "from_version": before.name, "promoted": serving.name,
            "promoted_after_s": round(promoted_at, 1), "refresh_job": job["id"], "trigger": job["trigger"],
            "status": job["status"], "target_version": job["target_version"], "tasks": job["total"],
            "re_predicted": job["done"], "skipped": job["skipped"], "failed": job["failed"],
            "llm_calls": job["llm_calls"], "cached": job["cached"], "llm_cost": round(job["llm_cost"], 2),
            "refresh_wall_s": round(job["finished_at"] - job["started_at"], 1),
            "predictions_per_task_by_version": sorted(
                {tuple(sorted(Counter(v).items())) for v in per_task.values()}
            ),
        }  # fmt: skip

    # ---- 2. overhead against raw LLM time

    def raw_llm_seconds(self, texts: list[str]) -> float:
        import torch

        from ls_backend.labelstudio import parse_label_config
        from ls_backend.llms.scoring import score_items
        from ls_backend.server.config import load_config
        from ls_backend.server.predictor import CascadePredictor, ProjectSetup

        torch.set_num_threads(1)
        config = load_config(self.config)
        label = parse_label_config((REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text())
        setup = ProjectSetup("1.1", label, config, QUESTION, "config")
        predictor = CascadePredictor()
        total = 0.0
        for slot in predictor.slots(config):  # the cascade's first LLM sees every text; report it alone
            llm = predictor.llm(slot)
            prompt = predictor.prompt(setup, slot)
            started = time.perf_counter()
            score_items(llm, prompt, texts, cache=None, batch_size=config.cascade_settings.batch_size)
            total += time.perf_counter() - started
            break
        return total

    def overhead(self, fresh: list[list[str]]) -> list[dict[str, Any]]:
        rows = []
        for i, texts in enumerate(fresh):
            raw = self.raw_llm_seconds(texts)
            project = self.project(f"bench: overhead {i}", texts)
            code, reply = post(f"{self.backend.url}/jobs/prelabel", {"project": project})
            assert code == 202, reply
            job = wait_job(self.backend.url, reply["job"]["id"])
            wall = job["finished_at"] - job["started_at"]
            rows.append({
                "tasks": len(texts), "raw_llm_s": round(raw, 2), "job_wall_s": round(wall, 2),
                "overhead": round(wall / raw - 1, 4), "job_llm_s": round(job["llm_seconds"], 2),
                "job_llm_cost_s": round(job["llm_cost"], 2),
                "overhead_vs_job_llm_cost": round(wall / job["llm_cost"] - 1, 4) if job["llm_cost"] else None,
                "job_label_studio_s": round(job["label_studio_seconds"], 2), "llm_calls": job["llm_calls"],
                "depth_1_calls_only": job["llm_calls"] == len(texts),
            })  # fmt: skip
            print(f"    overhead run {i}: {rows[-1]}", flush=True)
        return rows

    # ---- 3. cached throughput

    def cached(self, texts: list[str], batch_sizes: list[int]) -> list[dict[str, Any]]:
        rows = []
        for batch in batch_sizes:
            project = self.project(f"bench: cached, batch {batch}", texts, batch_size=batch)
            code, reply = post(f"{self.backend.url}/jobs/prelabel", {"project": project})
            assert code == 202, reply
            job = wait_job(self.backend.url, reply["job"]["id"])
            wall = job["finished_at"] - job["started_at"]
            rows.append({
                "batch_size": batch, "tasks": job["done"], "wall_s": round(wall, 2),
                "tasks_per_s": round(job["done"] / wall, 1), "llm_calls": job["llm_calls"],
                "cascade_s": round(job["llm_seconds"], 2), "label_studio_s": round(job["label_studio_seconds"], 2),
                "other_s": round(wall - job["llm_seconds"] - job["label_studio_seconds"], 2),
            })  # fmt: skip
            print(f"    cached, batch {batch}: {rows[-1]}", flush=True)
        return rows

    # ---- 4. interactive latency while a job runs

    def interactive(self, job_texts: list[str], probe_texts: list[str]) -> dict[str, Any]:
        label_config = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
        project = self.project("bench: interactive", job_texts)

        def probe(text: str) -> float:
            started = time.perf_counter()
            code, _ = post(f"{self.backend.url}/predict", {
                "tasks": [{"id": 10**9 + len(text), "data": {"text": text}}], "project": f"{project}.1",
                "label_config": label_config,
            })  # fmt: skip
            assert code == 200
            return time.perf_counter() - started

        idle = [probe(t) for t in probe_texts[:8]]
        code, reply = post(f"{self.backend.url}/jobs/prelabel", {"project": project})
        assert code == 202, reply
        time.sleep(2.0)
        busy = []
        for text in probe_texts[8:16]:
            busy.append(probe(text))
            time.sleep(1.0)
        job = get(f"{self.backend.url}/jobs/{reply['job']['id']}")["job"]
        still_running = job["status"] == "running"
        wait_job(self.backend.url, job["id"])
        return {
            "idle_ms": [round(x * 1000) for x in idle], "during_job_ms": [round(x * 1000) for x in busy],
            "idle_p50_ms": round(statistics.median(idle) * 1000), "during_job_p50_ms": round(statistics.median(busy) * 1000),
            "during_job_max_ms": round(max(busy) * 1000), "job_still_running_after_probes": still_running,
        }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO_ROOT / "tests" / "fixtures" / "demo_smollm2.yaml"))
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--kill-at", type=int, default=400)
    parser.add_argument("--overhead-tasks", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-sizes", default="10,50,250")
    parser.add_argument("--refresh-labels", type=int, default=40, help="labels before the retrain of step 1b")
    parser.add_argument(
        "--skip", default="", help="steps to skip: thousand,refresh,overhead,cached,interactive"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    from tests.labelstudio_server import LabelStudioServer

    skip = set(filter(None, args.skip.split(",")))
    texts, truth = sms_texts()
    needed = args.tasks + args.overhead_tasks * args.repeat + 200
    if len(texts) < needed:
        parser.error(f"the SMS set has {len(texts)} distinct texts; these settings need {needed}")
    results: dict[str, Any] = {"config": args.config, "load_average_start": os.getloadavg()}
    folder = Path(tempfile.mkdtemp(prefix="bench-prelabel-", dir=REPO_ROOT / ".cache"))
    ls_server = LabelStudioServer(port=free_port(), data_dir=folder / "labelstudio")
    ls = ls_server.start()
    bench = None
    try:
        bench = Bench(args, ls, folder)
        main_texts = texts[: args.tasks]
        if "thousand" not in skip:
            print(f"==> {args.tasks} tasks, kill -9 at {args.kill_at}, resume", flush=True)
            results["thousand"] = bench.thousand(main_texts)
            print(f"    {results['thousand']}", flush=True)
            if "refresh" not in skip:
                print(
                    f"==> {args.refresh_labels} labels, a retrain, the refresh after its promotion",
                    flush=True,
                )
                results["refresh"] = bench.refresh(bench.thousand_project, main_texts, truth)
                print(f"    {results['refresh']}", flush=True)
        offset = args.tasks
        if "overhead" not in skip:
            print("==> overhead against raw LLM time", flush=True)
            fresh = [texts[offset + i * args.overhead_tasks : offset + (i + 1) * args.overhead_tasks]
                     for i in range(args.repeat)]  # fmt: skip
            results["overhead"] = bench.overhead(fresh)
        offset += args.overhead_tasks * args.repeat
        if "cached" not in skip:
            print("==> cached throughput", flush=True)
            results["cached"] = bench.cached(main_texts, [int(b) for b in args.batch_sizes.split(",")])
        if "interactive" not in skip:
            print("==> /predict while a job runs", flush=True)
            results["interactive"] = bench.interactive(
                texts[offset : offset + 184], texts[offset + 184 : offset + 200]
            )
            print(f"    {results['interactive']}", flush=True)
        results["load_average_end"] = os.getloadavg()
    finally:
        if bench is not None:
            stop_backend(bench.backend.process)
        ls_server.stop()
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
