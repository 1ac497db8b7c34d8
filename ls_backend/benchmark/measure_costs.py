"""Measure each benchmark LLM's seconds per item on a quiet machine, every LLM on the same items, interleaved
(``scripts/measure_costs.py`` runs :func:`main`).

::

    .venv/bin/python scripts/measure_costs.py [--llms ls_backend/data/benchmark/llms.yaml] [--tasks ls_backend/data/benchmark/tasks.yaml]
        [--items ls_backend/data/benchmark/items.jsonl] [--out ls_backend/data/benchmark/costs.json] [--per-task 24] [--rounds 2]
        [--seed 0] [--batch-size 16] [--no-progress]

Why: the scoring run (``scripts/rescore_benchmark.py``, hours) shares the machine with whatever else runs, so
the seconds it records per item are not a fair comparison of the LLMs. Here all LLMs are loaded at once and, for
every task, score the same ``--per-task`` items one after the other, in an order that rotates every round, so
that background load falls on all of them alike. Each timed call is preceded by an untimed call on two other
items of the task, so that an LLM's shared-prompt-prefix cache is warm, as it is for all but the first batch of
a 500-item task in the scoring run. Nothing is cached: every timed item is a real forward pass.

The student (``ls_backend.student``: logistic regression on all-MiniLM-L6-v2 embeddings) is measured the same
way, interleaved with the LLMs: its cost is embedding the text (the linear model costs a matrix product).

Writes ``--out`` (JSON): per LLM (and under ``student``) and task, the median over rounds of the mean seconds per
item; per LLM, the mean over tasks; the load average before and after, the machine and the settings. ``lwc reproduce``
uses these as the cost of each (LLM, task) in place of the contended ``cost`` column of the scores table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.benchmark.settings import DEFAULT_ITEMS, DEFAULT_LLMS, DEFAULT_TASKS, machine_description

WARMUP_ITEMS = 2  # the fewest texts for which an LLM builds a shared-prefix cache


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llms", default=DEFAULT_LLMS)
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--items", default=DEFAULT_ITEMS)
    parser.add_argument("--out", default="ls_backend/data/benchmark/costs.json")
    parser.add_argument("--per-task", type=int, default=24, help="timed items per task (default 24)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, LLM order rotated each (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="item sampling seed (default 0)")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="texts per call, as lwc score (default 16)"
    )
    parser.add_argument("--only-tasks", nargs="*", help="measure only these tasks (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def sample_items(
    texts: Sequence[str], per_task: int, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """(timed texts, warm-up texts), disjoint, drawn without replacement."""
    need = per_task + WARMUP_ITEMS
    if len(texts) < need:
        raise ValueError(f"a task has {len(texts)} items; --per-task {per_task} needs {need}")
    order = rng.permutation(len(texts))[:need]
    picked = [texts[i] for i in order]
    return picked[WARMUP_ITEMS:], picked[:WARMUP_ITEMS]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ls_backend.llms.config import load_llm_configs
    from ls_backend.llms.scoring import score_items
    from ls_backend.tasks import load_tasks, read_items

    if args.per_task < 1 or args.rounds < 1 or args.batch_size < 1:
        raise ValueError("--per-task, --rounds and --batch-size must be >= 1")
    tasks = load_tasks(args.tasks)
    items = read_items(args.items, tasks)
    names = args.only_tasks or sorted(items.tasks)
    unknown = sorted(set(names) - set(items.tasks))
    if unknown:
        raise ValueError(f"--only-tasks: no items for task(s) {unknown}")
    rng = np.random.default_rng(args.seed)
    samples = {name: sample_items(items.tasks[name].texts, args.per_task, rng) for name in names}
    configs = load_llm_configs(args.llms)
    llms = []
    for config in configs:
        started = time.perf_counter()
        llms.append(config.build())
        print(f"loaded {config.name} in {time.perf_counter() - started:.1f} s", flush=True)

    from ls_backend.embeddings import embed_texts

    embed_texts(["load the embedding model"])
    # seconds[l, t, r]: mean seconds per timed item of member l (the LLMs, then the student) on task t in round r
    members = len(llms) + 1
    seconds = np.zeros((members, len(names), args.rounds))
    load_before = os.getloadavg()
    started = time.perf_counter()
    steps = args.rounds * len(names) * members
    with tqdm(total=steps, desc="measuring", disable=args.no_progress, unit="call") as bar:
        for r in range(args.rounds):
            order = [(r + k) % members for k in range(members)]
            for t, name in enumerate(names):
                timed, warmup = samples[name]
                for li in order:
                    if li == len(llms):  # the student
                        embed_texts(warmup, batch_size=args.batch_size)
                        t0 = time.perf_counter()
                        embed_texts(timed, batch_size=args.batch_size)
                        seconds[li, t, r] = (time.perf_counter() - t0) / len(timed)
                        bar.update(1)
                        continue
                    config, llm = configs[li], llms[li]
                    prompt = config.prompt_for(tasks[name])
                    score_items(llm, prompt, warmup, batch_size=args.batch_size)
                    t0 = time.perf_counter()
                    score_items(llm, prompt, timed, batch_size=args.batch_size)
                    seconds[li, t, r] = (time.perf_counter() - t0) / len(timed)
                    bar.update(1)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()

    per_task = np.median(seconds, axis=2)
    result: dict[str, Any] = {
        "command": "python scripts/measure_costs.py " + " ".join(sys.argv[1:]),
        "settings": {
            "per_task": args.per_task,
            "rounds": args.rounds,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "warmup_items": WARMUP_ITEMS,
        },
        "unit": "seconds per item",
        "statistic": "per (LLM, task): median over rounds of the mean seconds per timed item; per LLM: mean over tasks",
        "llms": {
            config.name: {
                "mean_seconds_per_item": float(per_task[li].mean()),
                "tasks": {name: float(per_task[li, t]) for t, name in enumerate(names)},
                "rounds": {name: [float(x) for x in seconds[li, t]] for t, name in enumerate(names)},
            }
            for li, config in enumerate(configs)
        },
        "student": {
            "mean_seconds_per_item": float(per_task[-1].mean()),
            "tasks": {name: float(per_task[-1, t]) for t, name in enumerate(names)},
            "rounds": {name: [float(x) for x in seconds[-1, t]] for t, name in enumerate(names)},
            "what": "embedding the text with all-MiniLM-L6-v2 (ls_backend.embeddings.embed_texts)",
        },
        "wall_seconds": wall,
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "machine": machine_description(),
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = measure(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"measure_costs: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    llms = result["llms"]
    cheapest = min(v["mean_seconds_per_item"] for v in llms.values())
    print(f"{'llm':<30} {'s/item':>8} {'ratio':>6}")
    for name, v in sorted(llms.items(), key=lambda kv: kv[1]["mean_seconds_per_item"]):
        print(f"{name:<30} {v['mean_seconds_per_item']:>8.4f} {v['mean_seconds_per_item'] / cheapest:>6.2f}")
    print(f"{'student (embedding)':<30} {result['student']['mean_seconds_per_item']:>8.4f} "
          f"{result['student']['mean_seconds_per_item'] / cheapest:>6.2f}")  # fmt: skip
    print(f"load average before {result['loadavg_before'][0]:.2f}, after {result['loadavg_after'][0]:.2f}; "
          f"{result['wall_seconds']:.0f} s; wrote {out}")  # fmt: skip
    return 0
