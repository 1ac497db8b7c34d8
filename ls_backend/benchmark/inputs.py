"""The benchmark's committed inputs, read as the studies take them (``ls_backend/data/benchmark/``: scores, costs,
content-free scores, item embeddings, task descriptions), and a synthetic benchmark folder of the same shape."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.scores import ScoresTable, TaskScores, read_scores


def load_table(scores: Path, tasks: Path | None) -> tuple[ScoresTable, dict[str, str]]:
    """The scores table with descriptions from the tasks file (when there is one)."""
    descriptions: dict[str, str] = {}
    if tasks is not None:
        from ls_backend.tasks import load_tasks

        descriptions = {name: spec.description for name, spec in load_tasks(tasks).items()}
    table = read_scores(scores, descriptions)
    if not len(table):
        raise ValueError(f"{scores}: the scores file has no rows")
    if len(table.llms) < 2:
        raise ValueError(f"{scores}: needs at least 2 LLMs that scored every task, got {list(table.llms)}")
    return table, descriptions


def subtable(table: ScoresTable, names: Iterable[str]) -> ScoresTable:
    return ScoresTable({name: table[name] for name in names})


def task_embeddings(table: ScoresTable, path: Path | None) -> Mapping[str, np.ndarray] | Callable[..., Any]:
    """Description embeddings: from a JSON file ``{task: [floats]}`` if given, else the packaged MiniLM."""
    if path is not None:
        data = json.loads(path.read_text(encoding="utf-8"))
        missing = [t.name for t in table if t.name not in data]
        if missing:
            raise ValueError(f"{path}: no embedding for task(s) {missing}")
        return {t.name: np.asarray(data[t.name], dtype=np.float64) for t in table}
    from ls_backend.embeddings import embed_texts

    return embed_texts


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


SYNTHETIC_STUDENT_SECONDS = 0.01
"""The synthetic student's seconds per item: about what embedding a text costs beside the LLMs' tenths of seconds."""


def write_synthetic(folder: Path, n_items: int = 500, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic table of the benchmark's shape (12 binary + 2 multi-class tasks x ``n_items`` x 3 LLMs) and its
    tasks file, for trying the reproduction before the real scores exist; beside them, as in the benchmark's
    folder, content-free scores, item embeddings that carry the labels (so the student learns) and a costs file
    (each LLM's mean seconds per item on each task, and the student's)."""
    import yaml

    from ls_backend.benchmark.answers import item_id
    from ls_backend.datasets import BBC_TOPICS, TREC_CLASSES
    from ls_backend.embeddings import save_embeddings
    from ls_backend.scores import write_scores
    from ls_backend.server.oot import CONTENT_FREE_FILE
    from ls_backend.synthetic import make_synthetic_scores, synthetic_item_embeddings

    llms = ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct")
    costs = (0.2, 0.6, 0.9)
    table = make_synthetic_scores(
        n_tasks=12, n_items=n_items, llms=llms, seed=seed, n_families=4, base_costs=costs
    )
    for k, classes in enumerate((tuple(TREC_CLASSES.values()), BBC_TOPICS)):
        extra = make_synthetic_scores(n_tasks=1, n_items=n_items, classes=classes, llms=llms, seed=seed + 1 + k,
                                      base_costs=costs, name_prefix=f"multi{len(classes)}_")  # fmt: skip
        table.tasks.update(extra.tasks)
    folder.mkdir(parents=True, exist_ok=True)
    scores, tasks = folder / "scores.jsonl.gz", folder / "tasks.yaml"
    write_scores(table, scores)
    # content-free scores (what CC fits on): each LLM's mean logits over the task's items, as the prompt's prior
    content_free = ScoresTable()
    for t in table:
        mean = t.logits.mean(axis=1, keepdims=True).repeat(3, axis=1)
        content_free.tasks[t.name] = TaskScores(
            name=t.name, classes=t.classes, items=np.array(["cf0", "cf1", "cf2"]), labels=np.full(3, -1),
            llms=t.llms, logits=mean, answers=mean.argmax(axis=2), costs=t.costs[:, :3], description=t.description,
        )  # fmt: skip
    write_scores(content_free, folder / CONTENT_FREE_FILE)
    ids = [item_id(t.name, str(i)) for t in table for i in t.items]
    vectors = np.concatenate([synthetic_item_embeddings(t.labels, len(t.classes), seed=seed + k)
                              for k, t in enumerate(table)])  # fmt: skip
    save_embeddings(folder / "embeddings.npz", [f"{k:016x}" for k in range(len(ids))], vectors, "synthetic",
                    [(i, row) for row, i in enumerate(ids)])  # fmt: skip
    seconds = {
        "unit": "seconds per item",
        "llms": {
            llm: {"tasks": {t.name: float(t.costs[t.llm_index(llm)].mean()) for t in table}} for llm in llms
        },
        "student": {"tasks": {t.name: SYNTHETIC_STUDENT_SECONDS for t in table}, "what": "synthetic"},
    }
    (folder / "costs.json").write_text(json.dumps(seconds, indent=1) + "\n", encoding="utf-8")
    spec = {t.name: {"question": t.description or t.name, "classes": list(t.classes),
                     "description": t.description or t.name} for t in table}  # fmt: skip
    tasks.write_text(yaml.safe_dump({"tasks": spec}, sort_keys=False), encoding="utf-8")
    return scores, tasks
