"""``lwc cascade-report``: the paper's Table 3 (single LLMs, votes and cascades, uncalibrated and calibrated)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cascade-report",
        help="F1 and cost of single LLMs, votes and cascades, uncalibrated and calibrated (Table 3)",
        description=(
            "For every task of a scores file: precision, recall, F1 and cost per item of each LLM alone, majority "
            "vote, weighted majority vote and the cost-aware cascade (uncalibrated and calibrated), on held-out "
            "splits of the labeled items, and their average over tasks. See docs/cascade.md."
        ),
    )
    parser.add_argument("--scores", required=True, help="scores file (JSON Lines, optionally .gz)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument(
        "--calibrator", default="ST", help="calibrator of the calibrated variants (ST, SV, ...)"
    )
    parser.add_argument("--bins", type=int, choices=(5, 10), default=10, help="bins per LLM (default 10)")
    parser.add_argument(
        "--trials", type=_positive_int, default=100, help="Optuna trials per tuning (default 100)"
    )
    parser.add_argument(
        "--splits", type=_positive_int, default=5, help="inner 80/20 splits per trial (default 5)"
    )
    parser.add_argument(
        "--eval-splits", type=_positive_int, default=3, help="held-out evaluation splits per task (default 3)"
    )
    parser.add_argument("--test-size", type=_fraction, default=0.2, help="held-out share (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--positive-class",
        help="class whose binary precision/recall/F1 is reported (tasks without it: macro averages)",
    )
    parser.add_argument(
        "--lambda", dest="lam", type=_non_negative_float, default=0.0,
        help="cost weight of the cascade reward hits - lambda x cost (default 0: the paper's)",
    )  # fmt: skip
    parser.add_argument(
        "--budget",
        type=_non_negative_float,
        help="budget mode: most accurate cascade under this cost per item",
    )
    parser.add_argument("--reference-llm", help="LLM that relative costs divide by (default: the cheapest)")
    parser.add_argument("--llm", nargs="+", help="only these LLMs (default: those that scored every task)")
    parser.add_argument("--frontier", action="store_true", help="also print the accuracy/cost frontiers")
    parser.add_argument(
        "--save-policies", help="folder to write each task's calibrated cascade policy (JSON)"
    )
    parser.add_argument(
        "--min-items", type=_positive_int, default=20, help="skip tasks with fewer labeled items"
    )
    parser.add_argument(
        "--jobs", type=_positive_int, default=1,
        help="worker processes, one task each (results do not change; default 1)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from ls_backend.benchmark.table3_runner import CascadeJob, TableOptions, run_jobs, task_job
    from ls_backend.cli import CLIError
    from ls_backend.ensemble.report import average_tables
    from ls_backend.scores import read_scores

    table = read_scores(args.scores)
    if not len(table):
        raise CLIError(f"{args.scores}: the scores file has no rows")
    llms = tuple(args.llm) if args.llm else table.llms
    missing = [llm for llm in llms if llm not in table.llms]
    if missing:
        raise CLIError(f"LLM(s) {missing} did not score every task; common LLMs: {list(table.llms)}")
    if not llms:
        raise CLIError("no LLM scored every task")
    if args.reference_llm is not None and args.reference_llm not in llms:
        raise CLIError(f"--reference-llm {args.reference_llm!r} is not one of {list(llms)}")
    reference = llms.index(args.reference_llm) if args.reference_llm else 0
    tasks = [t for t in table if int(t.labeled.sum()) >= args.min_items]
    skipped = [t.name for t in table if int(t.labeled.sum()) < args.min_items]
    if not tasks:
        raise CLIError(f"no task has {args.min_items} labeled items (use --min-items)")

    jobs = []
    for task in tasks:
        positive = None
        if args.positive_class is not None and args.positive_class in task.classes and len(task.classes) == 2:
            positive = task.classes.index(args.positive_class)
        options = TableOptions(
            calibrator=args.calibrator, n_bins=args.bins, n_trials=args.trials, n_splits=args.splits,
            n_eval_splits=args.eval_splits, test_size=args.test_size, seed=args.seed, lam=args.lam,
            budget=args.budget, positive_class=positive, reference_llm=reference,
        )  # fmt: skip
        jobs.append(task_job(task, llms, options))

    tunings_per_task = args.eval_splits * 2  # the uncalibrated and the calibrated cascade on each split
    progress = tqdm(
        total=len(tasks) * tunings_per_task, desc="cascade-report", unit="tuning", file=sys.stderr,
        disable=not sys.stderr.isatty(),
    )  # fmt: skip

    def show(job: CascadeJob) -> None:
        progress.set_postfix_str(job.task)

    results: dict[str, Any] = {}
    runs = run_jobs(jobs, args.jobs, on_start=show, on_step=lambda _method: progress.update(1))
    for task, (job, result) in zip(tasks, runs, strict=True):
        if args.jobs > 1:  # worker processes report no step
            progress.update(tunings_per_task)
        positive = job.options.positive_class
        result["f1_of"] = task.classes[positive] if positive is not None else "macro"
        policy = result.pop("policy")
        policy["classes"] = list(task.classes)
        if args.save_policies:
            folder = Path(args.save_policies)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{task.name}.policy.json").write_text(json.dumps(policy, indent=1), encoding="utf-8")
        results[task.name] = result
    progress.close()

    average = average_tables(list(results.values()))
    output = {
        "scores": str(args.scores),
        "llms": list(llms),
        "reference_llm": llms[reference],
        "settings": {
            "calibrator": args.calibrator, "bins": args.bins, "trials": args.trials, "splits": args.splits,
            "eval_splits": args.eval_splits, "test_size": args.test_size, "seed": args.seed, "lambda": args.lam,
            "budget": args.budget,
        },
        "tasks": results,
        "average": average,
        "skipped_tasks": skipped,
    }  # fmt: skip
    if args.json:
        print(json.dumps(output, indent=1, default=_json_default))
        return 0
    for name, result in results.items():
        print(
            f"task {name}: {result['n_items']} labeled items, {result['n_classes']} classes, F1 {result['f1_of']}"
        )
        print(_format_rows(result["rows"], llms[reference]))
        if args.frontier and result["frontier"]:
            print(_format_frontier(result["frontier"]))
        print()
    print(f"average over {len(results)} task(s)")
    print(_format_rows(average, llms[reference]))
    if skipped:
        print(f"skipped (fewer than {args.min_items} labeled items): {', '.join(skipped)}")
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _format_rows(rows: list[dict[str, Any]], reference: str) -> str:
    width = max(len("method"), *(len(r["method"]) for r in rows))
    header = f"  {'method':<{width}}  {'F1':>6}  {'prec.':>6}  {'recall':>6}  {'cost/item':>10}  {'cost vs ' + reference}"
    lines = [header]
    for r in rows:
        lines.append(
            f"  {r['method']:<{width}}  {r['f1']:6.3f}  {r['precision']:6.3f}  {r['recall']:6.3f}  "
            f"{r['cost_per_item']:10.4g}  {r['relative_cost']:.2f}x"
        )
    return "\n".join(lines)


def _format_frontier(points: list[dict[str, float]]) -> str:
    lines = [
        "  frontier of the calibrated cascade (trained on split 1): lambda, train acc., test F1, test cost"
    ]
    for p in points:
        lines.append(
            f"    lambda={p['lam']:<10.4g} train acc. {p['accuracy']:.3f}  test F1 {p['test_f1']:.3f}  "
            f"cost {p['test_cost_per_item']:.4g} ({p['test_relative_cost']:.2f}x)"
        )
    return "\n".join(lines)
