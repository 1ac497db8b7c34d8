#!/usr/bin/env python
"""The prompt study (``ls_backend.benchmark.prompt_study``): every packaged LLM's grid of prompt variants, scored
on a fixed subsample of every benchmark task; writes the study and its scores, and prints each LLM's choice.

::

    .venv/bin/python scripts/prompt_study.py [--llms ls_backend/data/benchmark/llms.yaml] [--dir ls_backend/data/benchmark]
        [--per-task 60] [--only LLM ...] [--cache ~/.cache/label-with-confidence/benchmark-scores.sqlite]

Outputs ``DIR/prompt_study.json`` (settings, variants, per-task metrics, means, the chosen variant, timings) and
``DIR/prompt_study_scores.jsonl.gz`` (every scored item, ``llm`` = ``<llm>:<variant>``), rewritten after each LLM.
The score cache is the benchmark's, so an interrupted run resumes and the chosen variants' items are reused by
``scripts/rescore_benchmark.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.benchmark.prompt_study import run_prompt_study  # noqa: E402
from ls_backend.benchmark.settings import DEFAULT_DIR, DEFAULT_LLMS  # noqa: E402
from ls_backend.scores import write_scores  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llms", default=DEFAULT_LLMS)
    parser.add_argument("--dir", default=DEFAULT_DIR, help="folder of tasks.yaml and items.jsonl; outputs")
    parser.add_argument("--per-task", type=int, default=60, help="items per task (default 60)")
    parser.add_argument(
        "--only", nargs="*", help="LLM names to study (default: all; others keep their results)"
    )
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache/label-with-confidence/benchmark-scores.sqlite")
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    out_json, out_scores = folder / "prompt_study.json", folder / "prompt_study_scores.jsonl.gz"
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() and args.only else {}

    def save(study: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        import torch

        merged = {**previous.get("llms", {}), **study["llms"]}
        kept = (
            [r for r in _old_rows(out_scores) if r["llm"].split(":")[0] not in study["llms"]]
            if previous
            else []
        )
        document = {
            **study,
            "llms": merged,
            "command": "python scripts/prompt_study.py " + " ".join(sys.argv[1:]),
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
            },
        }
        out_json.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        write_scores(kept + rows, out_scores)

    study, _ = run_prompt_study(
        args.llms, str(folder / "tasks.yaml"), str(folder / "items.jsonl"), args.cache,
        per_task=args.per_task, llm_names=args.only, on_llm_done=save, progress=not args.no_progress,
    )  # fmt: skip
    for name, result in study["llms"].items():
        best = result["chosen"]
        print(f"{name}: {best} (mean quality {result['summary'][best]['quality']:.3f}, "
              f"accuracy {result['summary'][best]['accuracy']:.3f})")  # fmt: skip
    return 0


def _old_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
