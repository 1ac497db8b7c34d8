"""``lwc status``, ``lwc versions``, ``lwc rollback``, ``lwc retrain``, ``lwc report``: the learning loop's admin
commands on a model directory (see docs/learning-loop.md)."""

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
        default=os.environ.get(MODEL_DIR_ENV, "models"),
        help=f"the backend's model directory (default ${MODEL_DIR_ENV} or ./models)",
    )
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


def _stores(args: argparse.Namespace) -> tuple[Any, Any]:
    from ls_backend.loop import LabelStore, VersionStore

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    db = Path(args.db) if args.db else model_dir / "labels.db"
    return LabelStore(db), VersionStore(model_dir, args.project)


def _status(args: argparse.Namespace) -> int:
    from ls_backend.loop.status import loop_status

    store, versions = _stores(args)
    status = loop_status(args.project, store, versions)
    if args.json:
        print(json.dumps(status, indent=1, default=str))
        return 0
    serving = status["serving"] or {}
    print(f"project {args.project}: {status['labeled_tasks']} labeled tasks {status['labels_by_source']}")
    print(f"  annotations without a label: {status['annotations_without_label'] or 'none'}")
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
