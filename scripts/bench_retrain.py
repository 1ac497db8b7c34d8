"""Learning-loop benchmarks (not a test): run with ``.venv/bin/python scripts/bench_retrain.py``.

1. Retrain time: 10,000 labels x 3 LLMs (synthetic), stored through ``record_event`` (webhook throughput) and
   refit + retrained with a 100-trial bin-edge tuning; the time per stage.
2. Label efficiency: on synthetic tasks (ls_backend.synthetic), or with ``--scores FILE`` on the real benchmark
   tasks of a scores table (ALL-OOT ST calibrators from the other tasks as the starting point), simulated
   annotators label calibration samples drawn by U, SE and IE; the served ACE over the whole task (calibrators
   fitted with Horvitz-Thompson weights, the default threshold policy) against the number of human labels.
   Writes docs/figures/label-efficiency.png.
3. Review labels in the calibrators' fit: a calibration sample plus the review band's labels, used as
   ``exclude``, ``unweighted`` or ``poststratified`` (ls_backend.loop.weighting); served ACE over the task.

Options: ``--quick`` (fewer repetitions), ``--skip-retrain``, ``--skip-efficiency``, ``--skip-review``,
``--reps N``, ``--scores FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ls_backend.calibration import make_calibrator
from ls_backend.loop import LabelStore, LoopConfig, ServingModel, VersionStore, retrain
from ls_backend.loop.routing import draw_calibration_sample
from ls_backend.loop.simulation import synthetic_project
from ls_backend.loop.tuning import quiet_optuna
from ls_backend.loop.weighting import calibration_weights
from ls_backend.metrics import weighted_ace
from ls_backend.synthetic import make_synthetic_scores

REPO = Path(__file__).resolve().parents[1]


def bench_retrain(n_labels: int = 10_000, n_trials: int = 100) -> dict[str, float]:
    project = synthetic_project(n_labels, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore(Path(tmp) / "labels.db")
        versions = VersionStore(tmp, 1)
        versions.ensure_initial(ServingModel.out_of_task(project.llms, project.classes))
        payloads = [project.annotation_payload(i, i + 1) for i in range(n_labels)]
        started = time.perf_counter()
        latencies = np.array([store.record_event(p).seconds for p in payloads])
        ingest = time.perf_counter() - started
        config = LoopConfig(n_trials=n_trials, tuning_timeout_s=None, n_splits=5)
        started = time.perf_counter()
        result = retrain(1, store, versions, project.score_fn, config)
        total = time.perf_counter() - started
    print(f"ingest: {n_labels} webhooks in {ingest:.1f} s ({n_labels / ingest:.0f}/s); record_event p50 "
          f"{np.median(latencies) * 1e3:.2f} ms, p99 {np.percentile(latencies, 99) * 1e3:.2f} ms, max "
          f"{latencies.max() * 1e3:.1f} ms")  # fmt: skip
    print(f"retrain of {n_labels} labels x 3 LLMs, {n_trials} trials: {total:.1f} s -> {result.status} "
          f"({result.reason})")  # fmt: skip
    print("  stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return {"ingest_s": ingest, "retrain_s": total, **{f"stage_{k}_s": v for k, v in result.timings.items()}}


def _served_ace(logits, answers, labels, calibrators, threshold: float = 0.8) -> float:
    llms = [f"m{k}" for k in range(logits.shape[0])]
    classes = [str(c) for c in range(logits.shape[2])]
    model = ServingModel.out_of_task(llms, classes, calibrators, threshold=threshold)
    served = model.predict(logits, answers)
    return weighted_ace(served.scores, served.predictions == labels)


def synthetic_targets() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, list]]:
    """Four synthetic targets, each with ST calibrators fitted on a task of its family (SIM-OOT-like)."""
    table = make_synthetic_scores(n_tasks=8, n_items=2000, n_families=4, seed=5)
    names = list(table.tasks)
    targets = []
    for t in range(4):
        target, source = table.tasks[names[t]], table.tasks[names[t + 4]]
        oot = [make_calibrator("ST").fit(source.logits[k], source.labels) for k in range(3)]
        targets.append((target.name, target.logits, target.answers, target.labels, oot))
    return targets


def real_targets(scores: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, list]]:
    """Every fully labeled binary task of a real scores table, with ST calibrators fitted on all OTHER tasks
    of the same classes (ALL-OOT), one per LLM."""
    from ls_backend.scores import read_scores

    table = read_scores(scores)
    llms = table.llms
    tasks = [t for t in table if len(t.classes) == 2 and t.labeled.all()]
    targets = []
    for target in tasks:
        others = [t for t in tasks if t.name != target.name and t.classes == target.classes]
        if not others:
            continue
        order = [target.llm_index(llm) for llm in llms]
        oot = []
        for llm in llms:
            x = np.concatenate([t.logits[t.llm_index(llm)] for t in others])
            y = np.concatenate([t.labels for t in others])
            oot.append(make_calibrator("ST").fit(x, y))
        targets.append((target.name, target.logits[order], target.answers[order], target.labels, oot))
    if not targets:
        raise SystemExit(f"{scores}: no two fully labeled binary tasks with the same classes")
    return targets


def label_efficiency(
    reps: int, budgets: list[int], out: Path, scores: Path | None = None
) -> dict[str, dict[int, tuple[float, float]]]:
    """Served ACE vs number of calibration labels for U, SE, IE (mean and standard error over tasks x reps)."""
    targets = real_targets(scores) if scores else synthetic_targets()
    source = f"{len(targets)} real benchmark tasks" if scores else "synthetic tasks"
    n_items = min(labels.size for _, _, _, labels, _ in targets)
    budgets = [k for k in budgets if k <= n_items // 2]
    results: dict[str, dict[int, list[float]]] = {m: {k: [] for k in budgets} for m in ("U", "SE", "IE")}
    oot_aces = []
    for t, (_, logits, answers, labels, oot) in enumerate(targets):
        oot_aces.append(_served_ace(logits, answers, labels, oot))
        uncalibrated = np.exp(logits[0] - logits[0].max(1, keepdims=True))
        uncalibrated = (uncalibrated / uncalibrated.sum(1, keepdims=True))[np.arange(labels.size), answers[0]]
        reference = oot[0].predict_proba(logits[0])[np.arange(labels.size), answers[0]]
        for rep in range(reps):
            for method in ("U", "SE", "IE"):
                for k in budgets:
                    rng = np.random.default_rng([t, rep, k, ord(method[0]), len(method)])
                    draw = draw_calibration_sample(
                        np.arange(labels.size), uncalibrated, reference, k, method, rng
                    )
                    idx = draw.task_ids
                    w = calibration_weights(
                        np.full(k, "calibration", dtype=object), draw.inclusion_probabilities
                    )
                    calibrators = [
                        make_calibrator("ST").fit(logits[j][idx], labels[idx], w) for j in range(3)
                    ]
                    results[method][k].append(_served_ace(logits, answers, labels, calibrators))
    summary = {
        m: {k: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v)))) for k, v in by_k.items()}
        for m, by_k in results.items()
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, by_k in summary.items():
        means = np.array([by_k[k][0] for k in budgets])
        errors = np.array([by_k[k][1] for k in budgets])
        ax.errorbar(budgets, means, yerr=errors, marker="o", capsize=3, label=method)
    ax.axhline(float(np.mean(oot_aces)), color="grey", linestyle="--", label="out-of-task (no label)")
    ax.set(xscale="log", xlabel="human calibration labels", ylabel="served ACE over the task",
           title=f"label efficiency ({source})")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"label efficiency (served ACE, mean ± s.e. over {source} x {reps} reps); out-of-task ACE "
          f"{np.mean(oot_aces):.4f}; figure {out}")  # fmt: skip
    print("  labels " + " ".join(f"{k:>15}" for k in budgets))
    for method, by_k in summary.items():
        print(f"  {method:<6} " + " ".join(f"{by_k[k][0]:.4f} ± {by_k[k][1]:.4f}" for k in budgets))
    return summary


def review_labels(
    reps: int, n_calibration: int = 100, n_review: int = 200, threshold: float = 0.8, calibrator: str = "ST"
) -> dict:
    """Served ACE when the calibrators also see review labels (the lowest-score band), three ways."""
    table = make_synthetic_scores(n_tasks=8, n_items=2000, n_families=4, seed=5)
    names = list(table.tasks)
    aces: dict[str, list[float]] = {"exclude": [], "unweighted": [], "poststratified": []}
    for t in range(4):
        target, source = table.tasks[names[t]], table.tasks[names[t + 4]]
        logits, answers, labels = target.logits, target.answers, target.labels
        oot = [make_calibrator("ST").fit(source.logits[k], source.labels) for k in range(3)]
        llms, classes = ["a", "b", "c"], ["0", "1"]
        served = (
            ServingModel.out_of_task(llms, classes, oot, threshold=threshold).predict(logits, answers).scores
        )
        in_band = served < threshold
        band_items = np.flatnonzero(in_band)
        uncalibrated = np.exp(logits[0] - logits[0].max(1, keepdims=True))
        uncalibrated = (uncalibrated / uncalibrated.sum(1, keepdims=True))[np.arange(labels.size), answers[0]]
        reference = oot[0].predict_proba(logits[0])[np.arange(labels.size), answers[0]]
        for rep in range(reps):
            rng = np.random.default_rng([t, rep, 99])
            draw = draw_calibration_sample(
                np.arange(labels.size), uncalibrated, reference, n_calibration, "IE", rng
            )
            pool = np.setdiff1d(band_items, draw.task_ids)
            reviewed = rng.choice(pool, size=min(n_review, pool.size), replace=False)
            idx = np.concatenate([draw.task_ids, reviewed])
            sources = np.array(
                ["calibration"] * draw.task_ids.size + ["review"] * reviewed.size, dtype=object
            )
            p = np.concatenate([draw.inclusion_probabilities, np.full(reviewed.size, np.nan)])
            for use in aces:
                w = calibration_weights(sources, p, use, in_band[idx])  # type: ignore[arg-type]
                calibrators = [
                    make_calibrator(calibrator).fit(logits[j][idx], labels[idx], w) for j in range(3)
                ]
                aces[use].append(_served_ace(logits, answers, labels, calibrators, threshold))
    summary = {u: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v)))) for u, v in aces.items()}
    print(f"review labels in the {calibrator} calibrators' fit ({n_calibration} IE calibration labels + up to {n_review} review "
          f"labels of the band score < {threshold}; served ACE over the task, 4 tasks x {reps} reps):")  # fmt: skip
    for use, (mean, se) in summary.items():
        print(f"  {use:<15} {mean:.4f} ± {se:.4f}")
    return summary


def main() -> int:
    quiet_optuna()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--skip-retrain", action="store_true")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--calibrators", default="ST,SV", help="calibrators of the review-label experiment")
    parser.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="real scores table for the label-efficiency study (else synthetic)",
    )
    parser.add_argument("--skip-review", action="store_true")
    args = parser.parse_args()
    reps = args.reps or (5 if args.quick else 25)
    results: dict = {}
    if not args.skip_retrain:
        results["retrain"] = bench_retrain()
    if not args.skip_efficiency:
        figure = "label-efficiency-real.png" if args.scores else "label-efficiency.png"
        results["label_efficiency"] = label_efficiency(
            reps, [10, 20, 50, 100, 200, 400], REPO / "docs/figures" / figure, args.scores
        )
    if not args.skip_review:
        results["review_labels"] = {c: review_labels(reps, calibrator=c) for c in args.calibrators.split(",")}
    path = REPO / ".cache" / "bench_retrain.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
