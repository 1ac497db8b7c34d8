"""Choose the learning loop's default cost weight on the benchmark (not a test; about 4 minutes per weight):
``.venv/bin/python scripts/cost_weight_study.py``. Writes docs/benchmark/cost_weight.md; the logic is
:mod:`ls_backend.benchmark.cost_weight`.

Options: ``--weights 0,0.1,0.2,0.3`` (the grid; it starts at 0), ``--repeats N`` (4, as the reproduction's answer
study), ``--jobs N`` (processes, one weight each; default min(2, CPUs)), ``--out FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ls_backend.benchmark.answers import Recipe, StudySettings, run_answer_study  # noqa: E402
from ls_backend.benchmark.cost_weight import (  # noqa: E402
    LABEL_COUNTS,
    WeightRow,
    choose_weight,
    weight_markdown,
    weight_row,
)
from ls_backend.benchmark.inputs import read_answer_inputs  # noqa: E402
from ls_backend.data import BENCHMARK  # noqa: E402
from ls_backend.datasets import NATURAL_SHARES  # noqa: E402
from ls_backend.loop.trainer import LoopConfig  # noqa: E402
from ls_backend.loop.tuning import quiet_optuna  # noqa: E402
from ls_backend.server.config import CascadeSettings  # noqa: E402

REPORT = REPO / "docs" / "benchmark" / "cost_weight.md"


def served_recipe() -> Recipe:
    defaults = CascadeSettings()
    return Recipe(defaults.correction, LoopConfig().calibrator, defaults.answer)


def one_weight(weight: float, repeats: int) -> WeightRow:
    quiet_optuna()
    inputs = read_answer_inputs(BENCHMARK)
    recipe = served_recipe()
    settings = StudySettings(
        label_counts=LABEL_COUNTS, repeats=repeats, seed=0, recipes=(recipe,), in_task_recipes=(recipe,),
        served=recipe, cost_weight=weight,
    )  # fmt: skip
    study = run_answer_study(
        inputs.table, inputs.texts, inputs.embed, inputs.content_free, inputs.item_embeddings, NATURAL_SHARES,
        settings, None, inputs.student_costs,
    )  # fmt: skip
    return weight_row(study, recipe, weight, LoopConfig().student_min_labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="0,0.1,0.2,0.3")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    if not weights or weights[0] != 0.0 or any(w < 0 for w in weights) or weights != sorted(weights):
        parser.error("--weights must be increasing, >= 0, and start at 0")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(one_weight, weights, [args.repeats] * len(weights)))
    tolerance = LoopConfig().accuracy_tolerance
    chosen = choose_weight(rows, tolerance)
    facts = {
        "command": "python scripts/cost_weight_study.py"
        + (f" --weights {args.weights}" if args.weights != "0,0.1,0.2,0.3" else "")
        + (f" --repeats {args.repeats}" if args.repeats != 4 else ""),
        "scores": "ls_backend/data/benchmark/scores.jsonl.gz",
        "repeats": args.repeats,
        "seed": 0,
        "seconds": time.perf_counter() - started,
        "student_from": LoopConfig().student_min_labels,
        "recipe": served_recipe().name,
    }
    markdown = weight_markdown(rows, chosen, tolerance, facts)
    args.out.write_text(markdown, encoding="utf-8")
    print(markdown)
    print(
        f"chosen cost weight: {chosen:g} (wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
