"""``lwc calibration-report``: the calibration experiment (the paper's Tables 1, 2 and 5) on a scores file."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibration-report",
        help="ACE uncalibrated vs out-of-task and in-task calibration (Tables 1, 2, 5)",
        description=(
            "Measure the adaptive calibration error of every LLM on every task of a scores file: uncalibrated, "
            "calibrated out of task (ALL-OOT, SIM-OOT) and in task with few labeled items (U/SE/IE draws), "
            "with temperature (ST) and vector (SV) scaling. See docs/experiments.md."
        ),
    )
    parser.add_argument("--scores", required=True, help="scores file (JSON Lines, optionally .gz)")
    parser.add_argument(
        "--tasks", help="tasks file (YAML/JSON) whose descriptions find similar tasks (SIM-OOT)"
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON instead of tables")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="draws per in-task cell (default 5)")
    parser.add_argument(
        "--shots", type=_shots, default=(10, 20, 50, 100), help="in-task budgets (default 10,20,50,100)"
    )
    parser.add_argument("--bins", type=_positive_int, default=10, help="ACE bins (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--n-clusters", type=_positive_int, help="clusters of task descriptions (default sqrt(tasks))"
    )
    parser.add_argument(
        "--min-heldout", type=_positive_int, default=20, help="fewest items to measure on (20)"
    )
    parser.add_argument(
        "--weighted-fit", action="store_true", help="fit in-task calibrators with 1/p weights"
    )
    parser.add_argument("--no-sim-oot", action="store_true", help="skip SIM-OOT (no embedding model needed)")
    parser.add_argument("--embedding-model", help="sentence-embedding model folder or hub id (else packaged)")
    parser.add_argument("--llm", nargs="+", help="only these LLMs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ls_backend.cli import CLIError
    from ls_backend.experiments import ExperimentConfig, run_calibration_experiment
    from ls_backend.scores import read_scores

    descriptions: dict[str, str] = {}
    if args.tasks:
        from ls_backend.tasks import load_tasks

        descriptions = {name: spec.description for name, spec in load_tasks(args.tasks).items()}
    table = read_scores(args.scores, descriptions)
    if not len(table):
        raise CLIError(f"{args.scores}: the scores file has no rows")
    if not any(task.labeled.any() for task in table):
        raise CLIError(f"{args.scores}: no item has a label; calibration needs labeled items")
    config = ExperimentConfig(
        shots=args.shots,
        repeats=args.repeats,
        n_bins=args.bins,
        seed=args.seed,
        n_clusters=args.n_clusters,
        min_heldout=args.min_heldout,
        weighted_fit=args.weighted_fit,
        llms=tuple(args.llm) if args.llm else None,
    )
    embedder: Callable[[list[str]], Any] | None = None
    if not args.no_sim_oot and len(table) > 1:
        from ls_backend.embeddings import embed_texts

        embedder = functools.partial(embed_texts, model=args.embedding_model)
    result = run_calibration_experiment(table, embedder, config, progress=sys.stderr.isatty())
    print(result.to_json() if args.json else result.report())
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _shots(text: str) -> tuple[int, ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated shot counts, e.g. 10,20,50,100")
    return tuple(sorted({_positive_int(p.strip()) for p in parts}))
