"""``lwc status``, ``lwc versions``, ``lwc rollback``, ``lwc retrain``, ``lwc report``, ``lwc calibration-sample``:
the learning loop's admin commands on the model directory ``lwc serve`` uses (see docs/learning-loop.md)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

MODEL_DIR_ENV = "LWC_MODEL_DIR"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        default=None,
        help=(
            f"the backend's model directory (default: as `lwc serve` finds it: model_dir of --config or "
            f"$LWC_CONFIG, else ${MODEL_DIR_ENV}, else ~/.cache/label-with-confidence/backend)"
        ),
    )
    parser.add_argument("--config", default=None, help="the backend YAML `lwc serve` runs with")
    parser.add_argument("--project", required=True, type=int, help="Label Studio's numeric project id")
    parser.add_argument("--db", default=None, help="the label store (default <model-dir>/labels.db)")


def register(subparsers: Any) -> None:
    status = subparsers.add_parser(
        "status", help="the learning loop of a project: labels, versions, retrains"
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    status.set_defaults(func=_status)

    versions = subparsers.add_parser("versions", help="list a project's model versions, oldest first")
    _common(versions)
    versions.add_argument("--json", action="store_true", help="print the listing as JSON")
    versions.set_defaults(func=_versions)

    rollback = subparsers.add_parser("rollback", help="serve an earlier model version")
    _common(rollback)
    rollback.add_argument("version", nargs="?", default=None, help="version name (default: the one before)")
    rollback.set_defaults(func=_rollback)

    retrain = subparsers.add_parser(
        "retrain",
        help="ask the server's retrain worker for a retrain now",
        description=(
            "Writes a retrain request into the project's model directory; the server's worker (in whichever "
            "process) picks it up within its poll interval, runs the retrain and promotes the candidate if it "
            "is not worse."
        ),
    )
    _common(retrain)
    retrain.add_argument("--note", default="", help="a note recorded as the retrain's trigger")
    retrain.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the result (default 0)")
    retrain.set_defaults(func=_retrain)

    report = subparsers.add_parser("report", help="reliability diagram and accuracy/cost frontier PNGs")
    _common(report)
    report.add_argument("--version", default=None, help="version name (default: the serving one)")
    report.add_argument("--out", default=".", help="output directory (default .)")
    report.set_defaults(func=_report)

    sample = subparsers.add_parser(
        "calibration-sample",
        help="ask the running server to draw a calibration sample (U, SE or IE) and mark it in Label Studio",
        description=(
            "POSTs /calibration-sample to the server: it draws K not-yet-labeled tasks with the chosen sampler "
            "(SE/IE: surrogate error of the cheapest LLM against its out-of-task calibration), records them with "
            "their inclusion probabilities, and shows them in Label Studio's 'Calibration sample' view. Basic auth "
            "from $BASIC_AUTH_USER/$BASIC_AUTH_PASS when set."
        ),
    )
    sample.add_argument("--project", required=True, type=int, help="Label Studio's numeric project id")
    sample.add_argument("--k", type=int, default=20, help="how many tasks (default 20)")
    sample.add_argument("--method", choices=("U", "SE", "IE"), default="SE", help="sampler (default SE)")
    sample.add_argument("--seed", type=int, default=None, help="random seed")
    sample.add_argument(
        "--server", default="http://127.0.0.1:9090", help="the backend's URL (default %(default)s)"
    )
    sample.set_defaults(func=_calibration_sample)


def _stores(args: argparse.Namespace) -> tuple[Any, Any]:
    from ls_backend.loop import LabelStore, VersionStore

    model_dir = _model_dir(args)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    db = Path(args.db) if args.db else model_dir / "labels.db"
    return LabelStore(db), VersionStore(model_dir, args.project)


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir:
        return Path(args.model_dir)
    from ls_backend.server.config import load_config

    return load_config(args.config).resolved_model_dir()


def _saved_project(versions: Any) -> dict[str, Any]:
    """What the server last saved about the project (``project.json``: thresholds, loop settings), or {}."""
    path = versions.directory / "project.json"
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _bands(store: Any, versions: Any, project: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The project's routing thresholds (as its server last saw them) and its predicted tasks per band."""
    import numpy as np

    from ls_backend.loop import Thresholds, assign_bands, band_counts

    saved = _saved_project(versions)
    thresholds = Thresholds(saved.get("review_threshold", 0.7), saved.get("auto_accept_threshold"))
    scores = list(store.predicted_scores(project).values())
    counts = band_counts(assign_bands(np.array(scores, dtype=object), thresholds))
    return {"review": thresholds.review, "auto_accept": thresholds.auto_accept}, counts


def _status(args: argparse.Namespace) -> int:
    from ls_backend.loop import LoopConfig
    from ls_backend.loop.status import loop_status

    store, versions = _stores(args)
    saved = _saved_project(versions)
    config = LoopConfig.from_dict(saved["loop"]) if isinstance(saved.get("loop"), dict) else None
    status = loop_status(args.project, store, versions, config)
    status["thresholds"], status["bands"] = _bands(store, versions, args.project)
    from ls_backend.loop.jobs import JobStore

    latest = JobStore(store.path).latest(args.project)
    status["job"] = latest.to_dict() if latest is not None else None
    if args.json:
        print(json.dumps(status, indent=1, default=str))
        return 0
    serving = status["serving"] or {}
    print(f"project {args.project}: {status['labeled_tasks']} labeled tasks {status['labels_by_source']}")
    print(f"  annotations without a label: {status['annotations_without_label'] or 'none'}")
    print(f"  predicted tasks by band {status['bands']} (thresholds {status['thresholds']})")
    print(
        f"  ignored events: {status['ignored_events'] or 'none'}; deleted annotations: {status['deleted_annotations']}"
    )
    print(
        f"  serving {serving.get('name')} ({serving.get('status')}, {serving.get('n_labels')} labels): held-out "
        f"ACE {_num(serving.get('holdout_ace'))}, accuracy {_num(serving.get('holdout_accuracy'))}, cost/item "
        f"{_num(serving.get('holdout_cost_per_item'))}"
    )
    if status["serving_error"] or serving.get("fallback"):
        print(f"  WARNING: {status['serving_error'] or serving.get('fallback')}")
    print(
        f"  retrain running: {status['retrain_running']}; label changes since the latest version: "
        f"{status['label_changes_since_latest_version']} (retrain every {status['retrain_every']})"
    )
    print(f"  {len(status['versions'])} versions; last retrain: {status['last_retrain']}")
    job = status["job"]
    if job is None:
        print("  pre-annotation jobs: none (lwc prelabel)")
    else:
        print(
            f"  latest job {job['id']} ({job['kind']}, {job['mode']}): {job['status']}, {job['processed']} of "
            f"{job['total']} tasks ({job['done']} predicted, {job['skipped']} skipped, {job['failed']} failed), "
            f"{job['llm_calls']} LLM calls, target {job['target_version']}"
            + (f"; {job['note']}" if job.get("note") else "")
        )
    return 0


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _versions(args: argparse.Namespace) -> int:
    _, versions = _stores(args)
    listing = versions.list()
    if args.json:
        print(json.dumps(listing, indent=1, default=str))
        return 0
    for entry in listing:
        mark = "*" if entry.get("serving") else " "
        if entry["status"] == "invalid":
            print(f"{mark} {entry['name']}  INVALID: {entry['error']}")
            continue
        metrics = entry.get("metrics", {})
        print(
            f"{mark} {entry['name']}  {entry['status']:<9} labels {entry.get('n_labels', 0):>6}  held-out ACE "
            f"{_num(metrics.get('holdout_ace'))} acc {_num(metrics.get('holdout_accuracy'))} cost "
            f"{_num(metrics.get('holdout_cost_per_item'))}  {entry.get('evaluation', {}).get('reason', '')}"
        )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    _, versions = _stores(args)
    version = versions.rollback(args.version)
    print(f"project {args.project} now serves {version.name}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from ls_backend.loop import request_retrain_file
    from ls_backend.loop.trainer import read_retrain_status

    _, versions = _stores(args)
    before = versions.latest()
    path = request_retrain_file(versions, args.note)
    print(f"retrain requested ({path}); a running server's worker picks it up")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        latest = versions.latest()
        if latest is not None and (before is None or latest.name != before.name):
            print(f"new version {latest.name}: {latest.status} ({latest.evaluation.get('reason')})")
            return 0
        status = read_retrain_status(versions)
        if (
            not path.exists()
            and status
            and status.get("stage") == "done"
            and status.get("outcome") == "skipped"
        ):
            print("the retrain was skipped: no label changed")
            return 0
        time.sleep(0.5)
    if args.wait:
        print(f"no new version after {args.wait:.0f} s; `lwc status` shows the retrain's progress")
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, versions = _stores(args)
    version = versions.load(args.version) if args.version else versions.serving()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reliability = (version.evaluation.get("candidate") or {}).get("reliability")
    if not reliability:
        print(f"{version.name} has no held-out evaluation (status {version.status}): nothing to plot")
        return 1
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot(reliability["mean_score"], reliability["hit_rate"], marker="o", label=version.name)
    serving_reliability = (version.evaluation.get("serving") or {}).get("reliability")
    if serving_reliability:
        ax.plot(serving_reliability["mean_score"], serving_reliability["hit_rate"], marker="s", alpha=0.6,
                label=f"{version.evaluation.get('serving_version')} (serving then)")  # fmt: skip
    ace = version.evaluation["candidate"].get("ace")
    ax.set(xlabel="served score (equal-weight bins)", ylabel="held-out hit rate", xlim=(0, 1), ylim=(0, 1.02),
           title=f"reliability, held-out ACE {_num(ace)}")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    reliability_path = out / f"reliability-{args.project}-{version.name}.png"
    fig.tight_layout()
    fig.savefig(reliability_path, dpi=120)
    plt.close(fig)
    print(f"wrote {reliability_path}")
    frontier = version.metrics.get("frontier") or []
    if frontier:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([p["train_cost_per_item"] for p in frontier], [p["train_accuracy"] for p in frontier],
                marker=".", label="training labels")  # fmt: skip
        ax.plot([p["holdout_cost_per_item"] for p in frontier], [p["holdout_accuracy"] for p in frontier],
                marker="o", label="held-out labels")  # fmt: skip
        ax.set(xlabel="cost per item", ylabel="accuracy", title=f"accuracy/cost frontier of {version.name}")
        ax.legend(fontsize=8)
        frontier_path = out / f"frontier-{args.project}-{version.name}.png"
        fig.tight_layout()
        fig.savefig(frontier_path, dpi=120)
        plt.close(fig)
        print(f"wrote {frontier_path}")
    return 0


def _calibration_sample(args: argparse.Namespace) -> int:
    import base64
    import urllib.error
    import urllib.request

    from ls_backend.cli import CLIError

    body = {"project": args.project, "k": args.k, "method": args.method, "seed": args.seed}
    request = urllib.request.Request(
        f"{args.server.rstrip('/')}/calibration-sample",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            drawn = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise CLIError(f"the server refused: {e.code} {e.read().decode(errors='replace')}") from None
    except urllib.error.URLError as e:
        raise CLIError(f"cannot reach the server at {args.server}: {e.reason}") from None
    print(
        f"project {args.project}: drew {len(drawn['drawn'])} of {drawn['pool']} unlabeled tasks by {args.method}; "
        f"Label Studio view id {drawn.get('view')}"
    )
    for item in drawn["drawn"]:
        print(
            f"  task {item['task']}: inclusion probability {item['inclusion_probability']:.4f}, surrogate error "
            f"{item['surrogate_error']:.4f}"
        )
    return 0
