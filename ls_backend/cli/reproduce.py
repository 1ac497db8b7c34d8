"""``lwc reproduce``: the paper's Tables 1, 2, 3 and 5 from the committed scores of the public benchmark.

::

    lwc reproduce [--scores ls_backend/data/benchmark/scores.jsonl.gz] [--tasks ls_backend/data/benchmark/tasks.yaml]
        [--out docs/results.md] [--figures docs/figures] [--costs SCORES_DIR/costs.json] [--seed 0] [--quick]
        [--jobs 2] [--task-embeddings FILE.json] [--no-progress]
    lwc reproduce --write-synthetic DIR   # a synthetic table of the benchmark's size

``python scripts/reproduce_paper.py`` is the same command. No LLM is called: everything comes from the scores
table and, when there is one, the costs file of ``scripts/measure_costs.py``. The default paths are relative to
the current directory: run it from the repository's root. ``docs/results.md`` is byte-for-byte the same for the
same inputs, seed and settings. See docs/benchmark/README.md.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ls_backend.benchmark.settings import (
    DEFAULT_FIGURES,
    DEFAULT_OUT,
    DEFAULT_SCORES,
    DEFAULT_TASKS,
    QUICK,
    Settings,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="the paper's Tables 1, 2, 3 and 5 from the benchmark's scores (docs/results.md and its figures)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scores", default=DEFAULT_SCORES, help=f"scores table (default {DEFAULT_SCORES})")
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"tasks file with descriptions (default {DEFAULT_TASKS})"
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"markdown report to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--figures", default=DEFAULT_FIGURES, help=f"folder for the PNGs (default {DEFAULT_FIGURES})"
    )
    parser.add_argument(
        "--costs",
        help="seconds per item per (LLM, task) from scripts/measure_costs.py (default: costs.json beside the "
        "scores file, when there is one; '' = the scores table's own cost column)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="small settings for smoke tests (not for conclusions)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes for the calibration experiments, Table 3 and the answer study's work with labels "
        "(results do not change; default: 2, or 1 on a 1-CPU machine)",
    )
    parser.add_argument("--repeats", type=int, help="override: in-task repeats per cell")
    parser.add_argument("--n-clusters", type=int, help="override: SIM-OOT clusters (default 4)")
    parser.add_argument("--trials", type=int, help="override: Optuna trials per tuning (the paper: 400)")
    parser.add_argument("--eval-repeats", type=int, help="override: Table 3 evaluation splits per task")
    parser.add_argument(
        "--task-embeddings", help="JSON {task: [floats]} instead of embedding descriptions with MiniLM"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--write-synthetic",
        metavar="DIR",
        help="write a synthetic scores table of the benchmark's shape and its tasks file, then exit",
    )
    parser.add_argument(
        "--synthetic-items", type=int, default=500, help="items per task for --write-synthetic"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from ls_backend.benchmark.inputs import write_synthetic
    from ls_backend.benchmark.reproduce import command_line, reproduce
    from ls_backend.cli import CLIError

    if args.write_synthetic:
        written = write_synthetic(Path(args.write_synthetic), args.synthetic_items, args.seed)
        print(f"wrote {written[0]} and {written[1]}")
        return 0
    if args.jobs < 1:
        raise CLIError("--jobs must be >= 1")
    scores = Path(args.scores)
    if not scores.exists():
        raise CLIError(f"scores file {scores} does not exist; scripts/rescore_benchmark.py writes it (hours), or "
                       "try --write-synthetic DIR first")  # fmt: skip
    tasks = Path(args.tasks) if args.tasks else None
    if tasks is not None and not tasks.exists():
        raise CLIError(f"tasks file {tasks} does not exist (--tasks '' runs without descriptions)")
    if args.costs is None:
        beside = scores.parent / "costs.json"
        costs = beside if beside.exists() else None
    else:
        costs = Path(args.costs) if args.costs else None
        if costs is not None and not costs.exists():
            raise CLIError(f"costs file {costs} does not exist")
    overrides = {k: v for k, v in (("repeats", args.repeats), ("trials", args.trials),
                                   ("eval_repeats", args.eval_repeats), ("n_clusters", args.n_clusters))
                 if v is not None}  # fmt: skip
    if any(v < 1 for v in overrides.values()):
        raise CLIError("--repeats, --trials, --eval-repeats and --n-clusters must be >= 1")
    settings = replace(QUICK if args.quick else Settings(), seed=args.seed, **overrides)
    embeddings_file = Path(args.task_embeddings) if args.task_embeddings else None
    reproduce(
        scores, tasks, Path(args.out), Path(args.figures), settings, embeddings_file=embeddings_file,
        costs_file=costs, n_jobs=args.jobs, progress=not args.no_progress,
        command=command_line(scores, tasks, costs, args.seed, args.quick, overrides, embeddings_file),
    )  # fmt: skip
    print(f"wrote {args.out} and figures in {args.figures}")
    return 0
