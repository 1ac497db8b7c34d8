"""Webhook latency while a retrain tunes bin edges (not a test): run with ``.venv/bin/python scripts/bench_webhooks.py``.

For each mode and HTTP server, one after the other, a fresh model directory gets a synthetic project
(``ls_backend.loop.simulation``: ``--labels`` labeled tasks with texts, 3 synthetic LLMs) that the server restores at
start, and the backend is served as ``lwc serve --http-server S`` serves it (granian, the default, or waitress; with
``lwc serve``'s 128 threads) in a subprocess on loopback:

- ``none``: no retrain runs (the baseline);
- ``in-process``: START_TRAINING, and the worker thread tunes the bin edges in the server's process (the behaviour
  before issue #12: ``loop.tuning_process: false``);
- ``subprocess``: START_TRAINING, and the tuning runs in a separate, lower-priority process (the default).

Once the retrain's status file says ``tuning``, the client POSTs ``--events`` new ANNOTATION_CREATED webhooks at
once, each on its own connection (as Label Studio sends them); the table gives the client-side latency (queueing
included) and checks that every event was answered 200 ``applied`` and is in the label store. The ``selector``
client (the default) opens every connection at once from one thread and sends each request as soon as its
connection is up; the ``threads`` client (the one before) POSTs each from a thread of its own, released together by
a barrier, and used about 1 ms of CPU per webhook, as much as the server, on the same two cores (``client CPU``).
The retrain tunes for ``--tuning-s`` seconds (100,000 trials, capped by time), long enough to cover the burst; the
stage after the burst is reported.

The synthetic LLM outputs stand in for the score cache (no LLM is loaded): the server's ``score_fn`` is replaced
by the synthetic project's, which is what a warm score cache gives (every labeled text predicted before).
Each mode runs ``--repeat`` times, the modes interleaved (so a change in the machine's load hits all of them); the
table gives the median over the repetitions and every repetition's p99, the server's own mean time per webhook
(``in-app``, from /metrics: from the endpoint's start to its answer, so waiting for the group commit counts but
waiting for a free thread does not), the burst's webhooks per commit of the label store's group commit (``per
commit``, from /metrics' ``lwc_label_store_*`` counters), the server's CPU time per webhook during the burst
(``CPU ms``, user + system from /proc, of the server's processes but not the tuning process: the figure least moved
by other work on the machine, since the burst is bounded by one interpreter's CPU), and the machine's load average
before and after.

Options: ``--labels N`` (2000), ``--events N`` (200), ``--tuning-s S`` (8), ``--modes none,in-process,subprocess``,
``--repeat N`` (3), ``--threads N`` (the server's Python threads, 128 as in ``lwc serve``), ``--servers
granian,waitress`` (the HTTP servers compared, a row each), ``--sync normal,full`` (the label store's
``loop.label_store_sync``; several give a row per level; default ``normal``, the server's), ``--clients
selector,threads`` (a row each). Every case is interleaved with the others.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.benchmark.webhook_burst import CLIENTS, burst
from ls_backend.cli.serve import DEFAULT_THREADS, HTTP_SERVERS

REPO = Path(__file__).resolve().parents[1]
PROJECT = 1
MODES = ("none", "in-process", "subprocess")
SYNC_LEVELS = ("normal", "full")  # loop.label_store_sync
LABEL_CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
    '<Choice value="yes"/><Choice value="no"/></Choices></View>'
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_config(
    model_dir: Path, mode: str, tuning_s: float, llms: tuple[str, ...], sync: str = "normal"
) -> dict[str, Any]:
    return {
        # the synthetic project's LLM names; never loaded (the server's score_fn is the synthetic one)
        "llms": [{"name": name, "kind": "hf", "model": f"synthetic/{name}"} for name in llms],
        "model_dir": str(model_dir),
        "oot_scores": str(model_dir / "no-oot-scores.jsonl.gz"),
        "cascade": {"similar_tasks": False},
        "loop": {
            "retrain_every": 0,
            "min_train_labels": 10,
            "min_tuning_labels": 50,
            "n_trials": 100_000,
            "tuning_timeout_s": tuning_s,
            "poll_s": 0.5,
            "idle_stop_s": None,
            "tuning_process": mode == "subprocess",
            "views": False,
            "uncertainty_sampling": False,
            "label_store_sync": sync,
        },
    }


def prepare(
    folder: Path, mode: str, n_labels: int, n_events: int, tuning_s: float, sync: str = "normal"
) -> Path:
    """A model directory the server restores the synthetic project from; returns its config file."""
    from ls_backend.loop import LabelStore, ServingModel, VersionStore
    from ls_backend.loop.simulation import synthetic_project

    project = synthetic_project(n_labels + n_events, seed=7, project=PROJECT)
    model_dir = folder / "models"
    store = LabelStore(model_dir / "labels.db", synchronous="NORMAL")
    for position in range(n_labels):
        store.record_event(project.annotation_payload(position, position + 1))
    store.close()
    versions = VersionStore(model_dir, PROJECT)
    versions.ensure_initial(ServingModel.out_of_task(project.llms, project.classes))
    record = {
        "project": f"{PROJECT}.1795875050",
        "label_config": LABEL_CONFIG,
        "extra_params": {},
        "question": "Is this a yes?",
        "question_source": "config",
    }
    (versions.directory / "project.json").write_text(json.dumps(record))
    config = folder / "backend.json"
    config.write_text(json.dumps(backend_config(model_dir, mode, tuning_s, project.llms, sync)))
    return config


def serve(config_path: Path, port: int, threads: int, n_items: int, http_server: str) -> None:
    """The server subprocess: the real app (learning loop on) with the synthetic project's score_fn, served as
    ``lwc serve --http-server`` serves it."""
    from ls_backend.cli import configure_logging
    from ls_backend.cli.serve import serve_granian, serve_waitress

    configure_logging()  # as lwc serve logs (into the run's server.log)
    make_app = functools.partial(bench_app, config_path, n_items)
    if http_server == "granian":
        serve_granian(make_app, "127.0.0.1", port, threads)
    else:
        serve_waitress(make_app(), "127.0.0.1", port, threads)


def bench_app(config_path: Path, n_items: int) -> Any:
    """The app the server serves (built in granian's worker process, where the app's threads run)."""
    from ls_backend.loop.simulation import synthetic_project
    from ls_backend.server import CascadePredictor, create_app
    from ls_backend.server.projects import ProjectDescriptions

    config = json.loads(config_path.read_text())
    project = synthetic_project(n_items, seed=7, project=PROJECT)
    app = create_app(
        config, CascadePredictor(), auth=None, webhook_secret=None, descriptions=ProjectDescriptions(None)
    )
    serving = app.extensions["lwc"].learning.serving
    serving.score = lambda loop, k, texts: project.score_fn(k, texts)  # a warm score cache
    serving.sync_initial = lambda loop: None  # the initial version is in the model dir already
    return app


def post(url: str, body: Any, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def stage(status_file: Path) -> str | None:
    try:
        return json.loads(status_file.read_text()).get("stage")
    except (OSError, ValueError):
        return None


def run_mode(
    mode: str,
    args: argparse.Namespace,
    sync: str = "normal",
    http_server: str = "granian",
    client: str = "selector",
) -> dict[str, Any]:
    from ls_backend.loop import LabelStore
    from ls_backend.loop.simulation import synthetic_project

    with tempfile.TemporaryDirectory(prefix="lwc-bench-webhooks-") as tmp:
        folder = Path(tmp)
        config = prepare(folder, mode, args.labels, args.events, args.tuning_s, sync)
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        }
        env.setdefault("OMP_NUM_THREADS", "1")
        log = (folder / "server.log").open("wb")
        command = [sys.executable, __file__, "--serve", str(config), "--port", str(port),
                   "--threads", str(args.threads), "--labels", str(args.labels), "--events", str(args.events),
                   "--servers", http_server]  # fmt: skip
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        load_before = os.getloadavg()
        try:
            wait_for(lambda: _health(url), 120, "the server")
            status_file = folder / "models" / f"project-{PROJECT}" / "retrain.status.json"
            if mode != "none":
                post(f"{url}/webhook", {"action": "START_TRAINING", "project": {"id": PROJECT}})
                wait_for(lambda: stage(status_file) == "tuning", 120, "the retrain to tune")
                time.sleep(args.burst_after_s)  # inside the tuning (the tuning process has started)
            project = synthetic_project(args.labels + args.events, seed=7, project=PROJECT)
            payloads = [
                project.annotation_payload(args.labels + i, args.labels + i + 1) for i in range(args.events)
            ]
            serving = server_processes(server.pid, http_server)
            metrics_before = server_metrics(url)
            cpu_before = sum(process_cpu_seconds(pid) for pid in serving)
            latencies, answers, client_cpu = burst(f"{url}/webhook", payloads, client)
            cpu_after = sum(process_cpu_seconds(pid) for pid in serving)
            cpu_per_event = (cpu_after - cpu_before) / len(payloads)
            stage_after = stage(status_file) if mode != "none" else "-"
            metrics_after = server_metrics(url)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
        load_after = os.getloadavg()
        stored = len(LabelStore(folder / "models" / "labels.db").labels(PROJECT))
    ok = sum(1 for status, body in answers if status == 200 and body.get("outcome") == "applied")
    commits = metrics_after["commits"] - metrics_before["commits"]
    per_commit = (metrics_after["events"] - metrics_before["events"]) / commits if commits else float("nan")
    return {
        "mode": mode,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "max_ms": float(np.max(latencies) * 1e3),
        "applied": ok,
        "stored": stored - args.labels,
        "stage_after": stage_after,
        "in_app_ms": metrics_after["in_app_s"] * 1e3,
        "per_commit": per_commit,
        "cpu_ms": cpu_per_event * 1e3,
        "client_cpu_ms": client_cpu / len(payloads) * 1e3,
        "load_before": load_before[0],
        "load_after": load_after[0],
    }


def server_processes(pid: int, http_server: str) -> list[int]:
    """The processes that serve: waitress's one, or granian's supervisor and its worker (whose child, the tuning
    process, is not counted; waitress's child is that tuning process)."""
    if http_server != "granian":
        return [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_metrics(url: str) -> dict[str, float]:
    """From the server's /metrics (read with prometheus_client's parser): its mean seconds per /webhook request so
    far (``in_app_s``, from the latency histogram), and its label store's group commits and the events they stored
    so far."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("endpoint", "/webhook") == "/webhook"
    }
    total = values.get("lwc_http_request_duration_seconds_sum", 0.0)
    count = values.get("lwc_http_request_duration_seconds_count", 0.0)
    return {
        "in_app_s": total / count if count else float("nan"),
        "commits": values.get("lwc_label_store_commits_total", 0.0),
        "events": values.get("lwc_label_store_committed_events_total", 0.0),
    }


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=2000, help="labeled tasks the retrain trains on")
    parser.add_argument("--events", type=int, default=200, help="concurrent webhooks in the burst")
    parser.add_argument("--tuning-s", type=float, default=8.0, help="seconds the retrain tunes bin edges")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="the server's Python threads (lwc serve's default)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(HTTP_SERVERS),
        help=f"HTTP server(s), comma-separated, of {list(HTTP_SERVERS)}",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, interleaved")
    parser.add_argument(
        "--burst-after-s", type=float, default=1.0, help="seconds from the tuning's start to the burst"
    )
    parser.add_argument(
        "--sync", default="normal", help=f"label store sync level(s), comma-separated, of {list(SYNC_LEVELS)}"
    )
    parser.add_argument(
        "--clients", default="selector", help=f"the burst's client(s), comma-separated, of {list(CLIENTS)}"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.port, args.threads, args.labels + args.events, args.servers)
        return 0
    modes = _choices(parser, "--modes", args.modes, MODES)
    syncs = _choices(parser, "--sync", args.sync, SYNC_LEVELS)
    servers = _choices(parser, "--servers", args.servers, HTTP_SERVERS)
    clients = _choices(parser, "--clients", args.clients, CLIENTS)
    # a row per mode, HTTP server, sync level and client
    cases = [
        (mode, server, sync, client)
        for mode in modes
        for server in servers
        for sync in syncs
        for client in clients
    ]
    names = {case: _case_name(case, (modes, servers, syncs, clients)) for case in cases}
    runs: dict[str, list[dict[str, Any]]] = {names[case]: [] for case in cases}
    for _ in range(args.repeat):
        for case in cases:
            mode, server, sync, client = case
            runs[names[case]].append(run_mode(mode, args, sync, server, client))
    print(
        f"\n{args.events} concurrent /webhook during a retrain of {args.labels} labels (tuning {args.tuning_s:g} s), "
        f"{args.threads} threads, label store sync {args.sync}, {os.cpu_count()} CPUs; median of "
        f"{args.repeat} interleaved runs"
    )
    width = max(12, *(len(name) for name in runs))
    print(
        f"{'tuning':<{width}} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'in-app ms':>9} {'per commit':>10} {'CPU ms':>6} "
        f"{'client CPU':>10} {'stored':>9}  {'p99 of each run (ms)':<24} load avg"
    )
    failed = False
    for mode, rows in runs.items():
        stored = sum(r["stored"] for r in rows)
        applied = sum(r["applied"] for r in rows)
        failed |= not stored == applied == args.events * len(rows)
        each = ", ".join(f"{r['p99_ms']:.0f}" for r in rows)
        loads = f"{min(r['load_before'] for r in rows):.2f}-{max(r['load_after'] for r in rows):.2f}"
        print(
            f"{mode:<{width}} {_median(rows, 'p50_ms'):7.1f} {_median(rows, 'p99_ms'):7.1f} {_median(rows, 'max_ms'):7.1f} "
            f"{_median(rows, 'in_app_ms'):9.2f} {_median(rows, 'per_commit'):10.1f} {_median(rows, 'cpu_ms'):6.2f} "
            f"{_median(rows, 'client_cpu_ms'):10.2f} "
            f"{f'{stored}/{args.events * len(rows)}':>9}  {each:<24} {loads}"
        )
        stages = {r["stage_after"] for r in rows}
        if not mode.startswith("none") and stages != {"tuning"}:
            print(
                f"  (stage after the burst: {sorted(stages)}; the burst should end while the retrain tunes)"
            )
    return 1 if failed else 0


def _choices(parser: argparse.ArgumentParser, option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated option's values, each one of ``allowed`` (else the parser's error)."""
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values or set(values) - set(allowed):
        parser.error(f"{option}: comma-separated, of {list(allowed)}; got {text!r}")
    return values


def _case_name(case: tuple[str, ...], choices: tuple[list[str], ...]) -> str:
    """The row's name: the mode, and each other option (server, sync level, client) where several are compared."""
    mode, *others = case
    varying = [value for value, values in zip(others, choices[1:], strict=True) if len(values) > 1]
    return f"{mode} ({', '.join(varying)})" if varying else mode


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


if __name__ == "__main__":
    sys.exit(main())
