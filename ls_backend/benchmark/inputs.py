"""The benchmark's committed inputs, read as the studies take them (``ls_backend/data/benchmark/``: scores, costs,
content-free scores, item embeddings, task descriptions)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ls_backend.scores import ScoresTable, TaskScores, read_scores


def apply_costs(table: ScoresTable, path: Path) -> ScoresTable:
    """The table with every item's cost set to its (LLM, task) seconds per item from a costs file of
    ``scripts/measure_costs.py``; every LLM and task of the table must be in it."""
    data = json.loads(path.read_text(encoding="utf-8"))
    per_llm = data.get("llms") if isinstance(data, dict) else None
    if not isinstance(per_llm, dict):
        raise ValueError(f"{path}: not a costs file of scripts/measure_costs.py (no 'llms' object)")
    tasks: dict[str, TaskScores] = {}
    for task in table:
        costs = np.empty_like(task.costs)
        for li, llm in enumerate(task.llms):
            value = per_llm.get(llm, {}).get("tasks", {}).get(task.name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{path}: no valid seconds per item for LLM {llm!r} on task {task.name!r}")
            costs[li] = float(value)
        tasks[task.name] = replace(task, costs=costs)
    return ScoresTable(tasks)


@dataclass
class AnswerInputs:
    """What :func:`ls_backend.benchmark.answers.run_answer_study` takes, read from a benchmark folder."""

    table: ScoresTable
    texts: dict[str, str]
    content_free: ScoresTable | None
    item_embeddings: Mapping[str, np.ndarray] | None
    student_costs: dict[str, float] | None
    embed: Callable[[Sequence[str]], np.ndarray]


def read_answer_inputs(folder: Path) -> AnswerInputs:
    """The benchmark folder's scores with their measured costs, task texts (question and description), content-free
    scores, item embeddings and the student's costs; descriptions are embedded with the packaged MiniLM on use."""
    from ls_backend.benchmark.answers import item_embeddings_by_task
    from ls_backend.embeddings import embed_texts, read_text_embeddings
    from ls_backend.server.oot import CONTENT_FREE_FILE
    from ls_backend.tasks import load_tasks

    costs_path = folder / "costs.json"
    table = apply_costs(read_scores(folder / "scores.jsonl.gz"), costs_path)
    specs = load_tasks(folder / "tasks.yaml")
    texts = {
        n: " ".join(p.strip() for p in (t.question, t.description) if p and p.strip())
        for n, t in specs.items()
    }
    cf_path, vectors_path = folder / CONTENT_FREE_FILE, folder / "embeddings.npz"
    content_free = read_scores(cf_path) if cf_path.exists() else None
    vectors = (
        item_embeddings_by_task(table, read_text_embeddings(vectors_path)[1])
        if vectors_path.exists()
        else None
    )
    student = json.loads(costs_path.read_text(encoding="utf-8")).get("student", {}).get("tasks")
    memo: dict[str, np.ndarray] = {}

    def embed(batch: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(batch) if t not in memo]
        if missing:
            memo.update(zip(missing, embed_texts(missing), strict=True))
        return np.stack([memo[t] for t in batch])

    return AnswerInputs(table, texts, content_free, vectors, dict(student) if student else None, embed)
