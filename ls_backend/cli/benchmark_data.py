"""``lwc benchmark-data``: write the public benchmark's items and tasks files."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark-data",
        help="write the public benchmark tasks (items JSONL + tasks YAML) from the packaged data sets",
    )
    parser.add_argument("--items", required=True, help="output items file (JSON Lines)")
    parser.add_argument("--tasks", required=True, help="output tasks file (YAML)")
    parser.add_argument("--n-items", type=int, default=500, help="items per task (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ls_backend.datasets import BENCHMARK_TASKS, write_benchmark

    count = write_benchmark(args.items, args.tasks, n_items=args.n_items, seed=args.seed)
    print(
        f"wrote {count} items of {len(BENCHMARK_TASKS)} tasks to {args.items}; task definitions to {args.tasks}"
    )
    return 0
