#!/usr/bin/env python
"""The quality guard of the reduced precisions: each packaged LLM in bf16 and int8 against its fp32 scores, on the
prompt study's fixed subsample of every benchmark task.

::

    .venv/bin/python scripts/precision_guard.py [--llms ls_backend/data/benchmark/llms.yaml] [--tasks ls_backend/data/benchmark/tasks.yaml]
        [--items ls_backend/data/benchmark/items.jsonl] [--per-task 60] [--precisions bfloat16 int8]
        [--study ls_backend/data/benchmark/prompt_study.json] [--reference-cache FILE] [--cache FILE]
        [--out docs/precision_guard.json]

The items are :func:`ls_backend.benchmark.prompt_study.study_items` (the first ``--per-task`` labeled items of
each task, half "yes" and half "no" on binary tasks). Each LLM is asked with its packaged default prompt, or,
with ``--study``, with the variant that study chose for it (the prompt whose fp32 scores of these very items
are in the benchmark's score cache). fp32 scores are read from ``--reference-cache`` (opened only to read; the
misses are scored here, fp32, and not written back) and the other precisions are scored fresh (or through
``--cache``, a cache of their own; the precision is part of the revision, so the keys never collide).

Per (LLM, precision, task): answer agreement with fp32, the largest and the mean absolute class-logit difference,
the change of the task's ranking quality (``prompt_study.task_quality``: AUC of the yes-minus-no margin, mean
one-vs-rest AUC on multi-class tasks), the change of the uncalibrated ACE (all items, 10 equal-mass bins) and of
the calibrated ACE: temperature scaling (ST) fitted on one half of the task's items and ACE (5 equal-mass bins)
on the other, both ways round, halves fixed by a seeded label-stratified split shared by all precisions. The
verdict of a precision for an LLM: it passes when the agreement over all items is at least ``--min-agreement``
(0.995) and the mean over tasks of the AUC change is within ``--max-auc-change`` (0.005); ``dtype: auto`` may
choose only precisions that pass (``PackagedModel.auto_dtypes``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.benchmark.precision_guard import (  # noqa: E402
    MAX_AUC_CHANGE,
    MIN_AGREEMENT,
    compare,
    summarize,
)
from ls_backend.benchmark.settings import DEFAULT_ITEMS, DEFAULT_LLMS, DEFAULT_TASKS, machine_description  # noqa: E402
from ls_backend.files import home_as_tilde  # noqa: E402


def markdown_table(result: Mapping[str, Any]) -> str:
    lines = [
        "| LLM | precision | agreement | worst task | max abs logit diff | mean abs logit diff | AUC change "
        "(mean) | worst task abs AUC change | ACE change | calibrated ACE change | passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for llm, by_precision in result["llms"].items():
        for precision, entry in by_precision.items():
            s = entry["summary"]
            lines.append(
                f"| `{llm}` | {precision} | {s['agreement']:.1%} | {s['min_task_agreement']:.1%} | "
                f"{s['max_abs_logit_diff']:.3f} | {s['mean_abs_logit_diff']:.4f} | {s['auc_change']:+.4f} | "
                f"{s['max_task_abs_auc_change']:.4f} | {s['ace_change']:+.4f} | {s['calibrated_ace_change']:+.4f} "
                f"| {'yes' if s['passes'] else 'no'} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llms", default=DEFAULT_LLMS)
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--items", default=DEFAULT_ITEMS)
    parser.add_argument("--per-task", type=int, default=60)
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "int8"])
    parser.add_argument("--only", nargs="*", help="LLM names (default: all of --llms)")
    parser.add_argument("--study", help="prompt_study.json: ask each LLM with the variant it chose")
    parser.add_argument(
        "--reference-cache",
        default=str(Path.home() / ".cache/label-with-confidence/benchmark-scores.sqlite"),
        help="score cache with the fp32 scores (only read)",
    )
    parser.add_argument("--cache", help="score cache for the other precisions (default: none, score fresh)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per call, as lwc score")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration halves")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT)
    parser.add_argument("--max-auc-change", type=float, default=MAX_AUC_CHANGE)
    parser.add_argument("--out", default="docs/precision_guard.json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the (LLM, precision) results of --out that this run does not redo",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, save: Any = None) -> dict[str, Any]:
    """The guard; ``save(result)`` is called after each (LLM, precision), so that a long run leaves its finished
    part on disk."""
    import torch
    import yaml

    from ls_backend.benchmark.prompt_study import PromptVariant, study_items, variant_config
    from ls_backend.llms.cache import ScoreCache
    from ls_backend.llms.config import LLMConfig
    from ls_backend.llms.scoring import score_items
    from ls_backend.tasks import load_tasks, read_items

    torch.set_num_threads(args.threads)
    tasks = load_tasks(args.tasks)
    items_file = read_items(args.items, tasks)
    by_task = {name: (t.ids, t.texts, t.labels) for name, t in items_file.tasks.items()}
    subsample = study_items(by_task, {name: tasks[name].classes for name in by_task}, args.per_task)
    with open(args.llms, encoding="utf-8") as f:
        entries = [e for e in yaml.safe_load(f)["llms"] if not args.only or e["name"] in args.only]
    study = json.loads(Path(args.study).read_text(encoding="utf-8")) if args.study else None
    reference_cache = ScoreCache(args.reference_cache) if args.reference_cache else None
    cache = ScoreCache(args.cache) if args.cache else None
    result: dict[str, Any] = {
        "command": "python scripts/precision_guard.py " + " ".join(map(home_as_tilde, sys.argv[1:])),
        "settings": {
            "per_task": args.per_task,
            "items": "ls_backend.benchmark.prompt_study.study_items",
            "precisions": args.precisions,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "calibrated_ace": "ST fitted on one half of a task's items, ACE (5 equal-mass bins) on the other, "
            "both ways, mean; halves seeded and label-stratified",
            "ace": "uncalibrated, all items, 10 equal-mass bins",
            "auc": "prompt_study.task_quality (binary: AUC of the yes-minus-no margin; multi-class: mean "
            "one-vs-rest AUC of the class probabilities); change = precision minus fp32",
            "rule": f"passes: agreement over all items >= {args.min_agreement} and |mean AUC change over tasks| "
            f"<= {args.max_auc_change}",
        },
        "llms": {},
        "prompts": {},
        "loadavg_before": list(os.getloadavg()),
    }
    started = time.perf_counter()
    configs, prompts, references = {}, {}, {}
    for entry in entries:
        name = entry["name"]
        config = LLMConfig.from_dict(entry)
        if study is not None:
            chosen = study["llms"][name]["chosen"]
            variant = next(
                PromptVariant.from_dict(v) for v in study["llms"][name]["variants"] if v["name"] == chosen
            )
            config = variant_config(entry, variant)
            result["prompts"][name] = {"variant": chosen, **variant.to_dict()}
        else:
            result["prompts"][name] = {"prompt": config.prompt, "few_shot": config.few_shot}
        configs[name] = config
        prompts[name] = {task: config.prompt_for(tasks[task]) for task in subsample}
        references[name] = fp32_reference(
            config, prompts[name], subsample, reference_cache, args.batch_size, score_items
        )
        result["llms"][name] = {}
    # every LLM in one precision before the next precision, so that an interrupted run has the first whole
    for precision in args.precisions:
        for name, config in configs.items():
            llm = with_dtype(config, precision).build()
            per_task = {}
            for task, chosen_items in subsample.items():
                labels = np.array(chosen_items.labels)
                t0 = time.perf_counter()
                batch = score_items(
                    llm, prompts[name][task], chosen_items.texts, cache=cache, batch_size=args.batch_size
                )
                seconds = (time.perf_counter() - t0) / len(chosen_items.texts)
                per_task[task] = compare(
                    references[name][task],
                    (batch.answers, batch.logits),
                    labels,
                    tasks[task].classes,
                    args.seed,
                )
                if not batch.meta.get("n_cached"):
                    per_task[task]["seconds_per_item"] = seconds
            summary = summarize(per_task, args.min_agreement, args.max_auc_change)
            result["llms"][name][precision] = {
                "revision": str(getattr(llm, "revision", "")),
                "prefix_cache_kept": bool(getattr(llm, "prefix_cache", False)),
                "loadavg_after": list(os.getloadavg()),
                "summary": summary,
                "tasks": per_task,
            }
            if save is not None:
                save(result)
            print(f"{name} {precision}: agreement {summary['agreement']:.2%}, AUC change "
                  f"{summary['auc_change']:+.4f}, max |dlogit| {summary['max_abs_logit_diff']:.3f}, "
                  f"passes: {summary['passes']}", flush=True)  # fmt: skip
            del llm
    result["wall_seconds"] = time.perf_counter() - started
    result["loadavg_after"] = list(os.getloadavg())
    result["machine"] = machine_description()
    if reference_cache is not None:
        reference_cache.close()
    if cache is not None:
        cache.close()
    return result


def fp32_reference(
    config: Any,
    prompts: Mapping[str, Any],
    subsample: Mapping[str, Any],
    reference_cache: Any,
    batch_size: int,
    score_items: Any,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task the fp32 (answers, logits) of the subsample: from the reference cache (only read) where every
    item is there, else scored here in fp32 (and not written back)."""
    fp32 = with_dtype(config, "float32")
    reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    missing = {}
    for task, chosen_items in subsample.items():
        if reference_cache is not None:
            hits = reference_cache.get_many(
                config.name, fp32_revision(fp32), prompts[task].hash(), chosen_items.texts
            )
            found = [h for h in hits if h is not None]
            if len(found) == len(hits):
                reference[task] = (np.array([h.answer for h in found]), np.array([h.logits for h in found]))
                continue
        missing[task] = chosen_items
    if missing:
        llm = fp32.build()
        for task, chosen_items in missing.items():
            batch = score_items(llm, prompts[task], chosen_items.texts, batch_size=batch_size)
            reference[task] = (batch.answers, batch.logits)
    print(f"{config.name}: fp32 reference from the cache for {len(subsample) - len(missing)} of {len(subsample)} "
          "tasks", flush=True)  # fmt: skip
    return reference


def with_dtype(config: Any, dtype: str) -> Any:
    """The LLM config entry with its ``dtype`` option set."""
    import dataclasses

    return dataclasses.replace(config, options={**config.options, "dtype": dtype})


def fp32_revision(config: Any) -> str:
    """The revision of an fp32 LLM entry, as the score cache keys it (predicted without loading)."""
    from ls_backend.server.predictor import _predicted_revision

    revision = _predicted_revision(config)
    if revision is None:
        raise ValueError(f"{config.name}: cannot tell its revision without loading it")
    return revision


def merged(previous: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with the (LLM, precision) entries of ``previous`` it does not have; the commands of both."""
    llms = {name: dict(by_precision) for name, by_precision in previous.get("llms", {}).items()}
    for name, by_precision in result["llms"].items():
        llms.setdefault(name, {}).update(by_precision)
    commands = [*previous.get("commands", [previous.get("command")]), result["command"]]
    return {**result, "llms": llms, "commands": [c for c in commands if c]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)

    previous = json.loads(out.read_text(encoding="utf-8")) if args.merge and out.exists() else None

    def save(result: dict[str, Any]) -> None:
        if previous is not None:
            result = merged(previous, result)
        out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    result = run(args, save)
    save(result)
    print(markdown_table(merged(previous, result) if previous is not None else result))
    print(f"load average before {result['loadavg_before'][0]:.2f}, after {result['loadavg_after'][0]:.2f}; "
          f"{result['wall_seconds']:.0f} s; wrote {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
