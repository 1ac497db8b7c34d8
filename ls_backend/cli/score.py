"""``lwc score``: ask every configured LLM about every item of every task and write the scores table.

::

    lwc score --llms llms.yaml --tasks tasks.yaml --items items.jsonl --out scores.jsonl \\
        [--cache scores.jsonl.cache.sqlite] [--batch-size 16] [--content-free CF.jsonl.gz] [--no-progress]

Items are JSON Lines, one object a line: ``{"id": "17", "task": "sms_spam", "text": "...", "label": "yes"}``
(``label`` optional). Results go through the score cache (by default next to the output), so an interrupted
run resumes where it stopped and a repeated run asks no LLM again. The scores table is written at the end
(atomically), one row per (task, item, LLM), in the format of :mod:`ls_backend.scores`.

``--content-free`` also scores the content-free inputs of contextual calibration
(:data:`ls_backend.calibration.CONTENT_FREE_TEXTS`) under every (LLM, task) prompt, into a second scores table
(items ``cf0``, ``cf1``, ... without labels); the out-of-task model reads it from beside the scores.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ls_backend.cli import CLIError
from ls_backend.tasks import read_items

log = logging.getLogger(__name__)


@dataclass
class LLMSummary:
    items: int = 0
    called: int = 0
    cached: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    unit: str = "seconds"


def run_score(args: argparse.Namespace) -> int:
    from ls_backend.llms.base import LLMError
    from ls_backend.llms.cache import ScoreCache
    from ls_backend.llms.config import load_llm_configs
    from ls_backend.llms.scoring import score_items
    from ls_backend.scores import write_scores
    from ls_backend.tasks import load_tasks

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    tasks = load_tasks(args.tasks)
    configs = load_llm_configs(args.llms)
    items = read_items(args.items, tasks)
    out = Path(args.out)
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    cache_path = Path(args.cache) if args.cache else out.with_name(out.name + ".cache.sqlite")
    n_items = sum(len(t.ids) for t in items.tasks.values())
    print(
        f"scoring {n_items} items of {len(items.tasks)} task(s) with {len(configs)} LLM(s); cache {cache_path}"
        + (f"; skipped {items.n_empty} item(s) with empty text" if items.n_empty else "")
    )

    from ls_backend.calibration import CONTENT_FREE_TEXTS

    rows: list[dict[str, Any]] = []
    content_free_rows: list[dict[str, Any]] = []
    summary: dict[str, LLMSummary] = {}
    with ScoreCache(cache_path) as cache:
        try:
            for config in configs:
                started = time.perf_counter()
                llm = config.build()
                load_seconds = time.perf_counter() - started
                stats = summary[config.name] = LLMSummary(unit=llm.cost_model.unit)
                for task_name, task_items in items.tasks.items():
                    task = tasks[task_name]
                    prompt = config.prompt_for(task)
                    result = score_items(
                        llm,
                        prompt,
                        task_items.texts,
                        cache=cache,
                        batch_size=args.batch_size,
                        progress=False if args.no_progress else f"{config.name}/{task_name}",
                    )
                    if args.content_free:
                        free = score_items(llm, prompt, list(CONTENT_FREE_TEXTS), cache=cache,
                                           batch_size=args.batch_size)  # fmt: skip
                        content_free_rows += [
                            {"task": task_name, "item": f"cf{i}", "llm": config.name, "classes": list(task.classes),
                             "label": None, "answer": task.classes[int(free.answers[i])],
                             "logits": [float(x) for x in free.logits[i]], "cost": float(free.costs[i])}
                            for i in range(len(CONTENT_FREE_TEXTS))
                        ]  # fmt: skip
                    stats.items += len(result)
                    stats.called += int(result.meta["n_called"])
                    stats.cached += int(result.meta["n_cached"])
                    stats.seconds += float(result.meta["seconds"])
                    stats.cost += float(result.costs.sum())
                    for i, item_id in enumerate(task_items.ids):
                        rows.append(
                            {
                                "task": task_name,
                                "item": item_id,
                                "llm": config.name,
                                "classes": list(task.classes),
                                "label": task_items.labels[i],
                                "answer": task.classes[int(result.answers[i])],
                                "logits": [float(x) for x in result.logits[i]],
                                "cost": float(result.costs[i]),
                            }
                        )
                log.debug("%s: loaded in %.1f s", config.name, load_seconds)
                del llm
        except KeyboardInterrupt:
            print(f"interrupted: finished batches are in {cache_path}; run the same command again to resume")
            return 130
        except LLMError as e:
            raise CLIError(f"{e} (finished batches are kept in {cache_path})") from None
    write_scores(rows, out)
    print(f"wrote {len(rows)} rows to {out}")
    if args.content_free:
        write_scores(content_free_rows, args.content_free)
        print(f"wrote {len(content_free_rows)} content-free rows to {args.content_free}")
    print(f"{'llm':<24} {'items':>7} {'called':>7} {'cached':>7} {'seconds':>9} {'cost':>12}  unit")
    for name, s in summary.items():
        print(
            f"{name:<24} {s.items:>7} {s.called:>7} {s.cached:>7} {s.seconds:>9.2f} {s.cost:>12.6g}  {s.unit}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score items with every configured LLM (answers, class logits, costs) into a scores table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--llms", required=True, help="LLM config (YAML/JSON), cheapest first")
    parser.add_argument(
        "--tasks", required=True, help="tasks file (YAML/JSON): question, classes, description"
    )
    parser.add_argument("--items", required=True, help="items, JSON Lines: id, task, text[, label]")
    parser.add_argument("--out", required=True, help="scores table to write (JSON Lines; .gz compresses)")
    parser.add_argument("--cache", help="score cache (SQLite); default: OUT.cache.sqlite next to the output")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per LLM call (default 16)")
    parser.add_argument(
        "--content-free",
        help="also score the content-free inputs of every (LLM, task) into this scores table",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_score)
