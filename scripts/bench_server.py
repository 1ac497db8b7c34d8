#!/usr/bin/env python
"""How fast the ML backend itself is: its overhead per task with every LLM output cached, and its cold start.

::

    .venv/bin/python scripts/bench_server.py [--seconds 20] [--batch 100] [--clients 4] [--threads 8]
        [--skip-throughput] [--skip-cold-start] [--oot-scores FILE]

**Throughput** (the server's own work per task: parse, cascade, calibrate, respond). The config is the default
three-LLM cascade (``config/default.yaml``'s packaged models) with a fresh model dir whose score cache is
pre-filled with outputs for 2,000 real SMS texts (written directly with ``ScoreCache.put_many``: random logits,
the LLMs' real names and revisions, the server's own prompt hashes), and a synthetic out-of-task table with those
LLM names (so the policy is a trained SIM-OOT table, 5 bins per LLM). No LLM is ever loaded or called (checked in
``/metrics`` afterwards). A load generator (``--clients`` threads, keep-alive ``http.client`` connections) sends
``/predict`` batches of ``--batch`` tasks for ``--seconds`` to servers in subprocesses on loopback, one after the
other, side by side:

- ``cascade``: the app under waitress, as ``lwc serve --http-server waitress`` serves it (``--threads``);
- ``no-op``: the same app and server with a predictor that answers the first class at once (the HTTP, JSON and
  Flask share of the cost);
- ``cascade (Flask dev)``: the cascade under Flask's development server (the obvious alternative to waitress).

**Cold start**: the time from launching ``lwc serve --config config/default.yaml`` (packaged models already
converted, a fresh model dir: nothing cached) to ``/health`` answering, to its models being loaded, and to the first
successful ``/predict`` of one new text.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BINARY = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
QUESTION = "Is this SMS message spam?"
PROJECT = "1.1795875050"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lwc() -> list[str]:
    exe = Path(sys.executable).parent / "lwc"
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "import sys; from ls_backend.cli import main; sys.exit(main())"]
    )


# --------------------------------------------------------------------------------------------------------------
# the server side


class NoopPredictor:
    """Answers every text with the first class, score 0.5, at once: the server without a model."""

    def model_version(self, project: Any) -> str:
        return "noop"

    def predict(self, project: Any, texts: list[str]) -> list[Any]:
        from ls_backend.server.predictor import Prediction

        first = project.label.choices[0]
        return [Prediction(first, 0.5, "noop") for _ in texts]


def serve(kind: str, config: str, port: int, threads: int) -> None:
    """Run one server in this process (the benchmark starts these as subprocesses)."""
    from ls_backend.server.app import create_app

    predictor = NoopPredictor() if kind == "noop" else None
    app = create_app(config, predictor, auth=None, webhook_secret=None)
    if kind == "dev":
        app.run(host="127.0.0.1", port=port, threaded=True)
    else:
        import waitress

        waitress.serve(app, host="127.0.0.1", port=port, threads=threads, ident="bench")


def start_server(kind: str, config: Path, threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", kind, "--config", str(config), "--port", str(port)]
    command += ["--threads", str(threads)]
    env = {
        k: v for k, v in os.environ.items() if k not in ("LWC_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
    }
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(f"{url}/health") is not None, 120, process, log)
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
            return (
                json.loads(body)
                if response.headers.get_content_type() == "application/json"
                else body.decode()
            )
    except OSError:
        return None


def post(url: str, body: dict[str, Any], timeout: float = 600) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_for(ready: Any, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout} s; see {log}")


# --------------------------------------------------------------------------------------------------------------
# setup: config, out-of-task table, pre-filled score cache


def sms_texts(n: int) -> list[str]:
    from ls_backend.datasets import load_sms_spam

    texts = list(dict.fromkeys(r.text for r in load_sms_spam() if r.text.strip()))
    return texts[:n]


def prepare(folder: Path, texts: list[str], oot_scores: Path | None) -> Path:
    """Write the benchmark's config, its out-of-task table and the pre-filled score cache; returns the config."""
    import numpy as np
    import yaml

    from ls_backend.labelstudio import parse_label_config
    from ls_backend.llms.cache import ScoreCache
    from ls_backend.scores import write_scores
    from ls_backend.server.config import DEFAULT_LLMS, BackendConfig
    from ls_backend.server.predictor import CascadePredictor, ProjectSetup
    from ls_backend.synthetic import make_synthetic_scores

    names = tuple(e["name"] for e in DEFAULT_LLMS)
    if oot_scores is None:
        table = make_synthetic_scores(n_tasks=9, n_items=300, llms=names, seed=0)
        oot_scores = folder / "oot" / "scores.jsonl.gz"
        oot_scores.parent.mkdir(parents=True)
        write_scores(table, oot_scores)
        tasks = {t.name: {"question": t.description, "classes": list(t.classes)} for t in table}
        (oot_scores.parent / "tasks.yaml").write_text(yaml.safe_dump({"tasks": tasks}))
    data = {
        "llms": [dict(e) for e in DEFAULT_LLMS],
        "question": QUESTION,
        "model_dir": str(folder / "models"),
        "oot_scores": str(oot_scores),
    }
    config_path = folder / "backend.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = BackendConfig.from_mapping(data)
    predictor = CascadePredictor()
    project = ProjectSetup(PROJECT, parse_label_config(BINARY), config, QUESTION, "config")
    cache = ScoreCache(config.resolved_model_dir() / "scores.sqlite")
    rng = np.random.default_rng(0)
    for slot in predictor.slots(config):
        prompt = predictor.prompt(project, slot)
        logits = rng.normal(0.0, 2.0, size=(len(texts), 2))
        cache.put_many(
            slot.name,
            predictor.revision(slot),
            prompt.hash(),
            texts,
            logits.argmax(1),
            logits,
            rng.uniform(0.05, 0.5, len(texts)),
        )
    return config_path


# --------------------------------------------------------------------------------------------------------------
# the load generator


def bodies(texts: list[str], batch: int, count: int = 64) -> list[bytes]:
    import random

    rng = random.Random(0)
    result = []
    for b in range(count):
        chosen = rng.sample(range(len(texts)), batch)
        tasks = [
            {"id": b * batch + i + 1, "data": {"text": texts[j]}, "project": 1} for i, j in enumerate(chosen)
        ]
        body = {"tasks": tasks, "project": PROJECT, "label_config": BINARY, "params": {"context": None}}
        result.append(json.dumps(body).encode())
    return result


def load(url: str, payloads: list[bytes], seconds: float, clients: int) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        mine: list[float] = []
        i = worker
        while time.perf_counter() < stop_at:
            payload = payloads[i % len(payloads)]
            i += clients
            started = time.perf_counter()
            connection.request("POST", "/predict", payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                with lock:
                    failures.append(f"{response.status}: {data[:200]!r}")
        connection.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "seconds": elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def check_reply(url: str, payload: bytes, batch: int) -> str:
    status, reply = post(f"{url}/predict", json.loads(payload))
    if status != 200:
        raise RuntimeError(f"/predict answered {status}: {reply}")
    results = reply["results"]
    assert len(results) == batch and all(r["result"] and 0 <= r["score"] <= 1 for r in results), results[:2]
    return str(results[0]["model_version"])


def throughput(args: argparse.Namespace) -> None:
    texts = sms_texts(2000)
    with tempfile.TemporaryDirectory(prefix="lwc-bench-") as tmp:
        folder = Path(tmp)
        config = prepare(folder, texts, args.oot_scores)
        payloads = bodies(texts, args.batch)
        rows = []
        for kind, label in (
            ("cascade", "cascade (waitress)"),
            ("noop", "no-op predictor (waitress)"),
            ("dev", "cascade (Flask dev server)"),
        ):
            process, url = start_server(kind, config, args.threads, folder / f"{kind}.log")
            try:
                setup = {
                    "project": PROJECT,
                    "schema": BINARY,
                    "hostname": "",
                    "access_token": "",
                    "extra_params": None,
                }
                post(f"{url}/setup", setup)
                version = check_reply(
                    url, payloads[0], args.batch
                )  # builds the out-of-task model (embeds once)
                load(url, payloads, min(3.0, args.seconds), args.clients)  # warm up
                result = load(url, payloads, args.seconds, args.clients)
                metrics = get(f"{url}/metrics") or ""
                calls = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith("lwc_llm_calls_total")
                )
            finally:
                stop(process)
            tasks_per_s = result["requests"] * args.batch / result["seconds"]
            rows.append((label, tasks_per_s, result, version, calls))
        print(
            f"\nthroughput: batches of {args.batch} tasks, {args.clients} clients, {args.seconds:.0f} s each, "
            f"{args.threads} server threads, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})"
        )
        print(
            f"{'server':<28} {'tasks/s':>8} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}  {'vs cascade':>10}  model version, LLM calls"
        )
        base = rows[0][1]
        for label, tasks_per_s, result, version, calls in rows:
            print(
                f"{label:<28} {tasks_per_s:>8.0f} {result['requests']:>8.0f} {result['p50_ms']:>8.1f} "
                f"{result['p99_ms']:>8.1f}  {tasks_per_s / base:>9.2f}x  {version}, {calls:.0f}"
            )


# --------------------------------------------------------------------------------------------------------------
# cold start


def cold_start(args: argparse.Namespace) -> None:
    from ls_backend.llms.packaged import is_converted
    from ls_backend.server.config import load_config

    config_path = REPO_ROOT / "config" / "default.yaml"
    models = [str(dict(e)["model"]) for e in load_config(config_path).llms]
    missing = [m for m in models if not is_converted(m)]
    if missing:
        print(f"\ncold start: skipped, convert {missing} first (e.g. run `make demo` once)")
        return
    with tempfile.TemporaryDirectory(prefix="lwc-cold-") as tmp:
        port = free_port()
        log = Path(tmp) / "serve.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LWC_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
        }
        env["LWC_MODEL_DIR"] = str(Path(tmp) / "models")
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        with log.open("wb") as out:
            process = subprocess.Popen([*lwc(), "serve", "--port", str(port), "--config", str(config_path)],
                                       stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)  # fmt: skip
        try:
            wait_for(lambda: get(f"{url}/health") is not None, 300, process, log)
            health_s = time.perf_counter() - started
            text = f"Congratulations! You won a prize at {time.time()}. Call now to claim."  # new: nothing cached
            body = {"tasks": [{"id": 1, "data": {"text": text}}], "project": PROJECT, "label_config": BINARY}
            status, reply = post(f"{url}/predict", body)
            predict_s = time.perf_counter() - started
            if status != 200 or not reply["results"][0]:
                raise RuntimeError(f"/predict answered {status}: {reply}")
            wait_for(lambda: (get(f"{url}/health") or {}).get("model") == "ready", 600, process, log)
            ready_s = time.perf_counter() - started
        finally:
            stop(process)
        print(
            f"\ncold start of `lwc serve --config config/default.yaml` ({', '.join(models)} converted; fresh model "
            f"dir; load average {os.getloadavg()[0]:.1f}):"
        )
        print(f"  /health answers after {health_s:.1f} s")
        print(
            f"  first /predict of a new text answered after {predict_s:.1f} s "
            f"({reply['results'][0]['model_version']}, score {reply['results'][0]['score']:.3f})"
        )
        print(f"  all models loaded (/health model: ready) after {ready_s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="load per server (default 20)")
    parser.add_argument("--batch", type=int, default=100, help="tasks per /predict (default 100)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections (default 4)")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads (default 8)")
    parser.add_argument(
        "--oot-scores", type=Path, default=None, help="out-of-task table (default: synthetic)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-cold-start", action="store_true")
    parser.add_argument("--serve", choices=("cascade", "noop", "dev"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.config, args.port, args.threads)
        return 0
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_cold_start:
        cold_start(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
