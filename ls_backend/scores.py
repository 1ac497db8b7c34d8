"""The scores table: every LLM's answer, class logits and cost for every item of every task.

On disk it is JSON Lines (optionally gzip-compressed, by a ``.gz`` suffix), one object per (task, item, LLM)::

    {"task": "sms_spam", "item": "17", "llm": "smollm2", "classes": ["yes", "no"],
     "label": "yes", "answer": "no", "logits": [1.25, 2.5], "cost": 0.21}

- ``classes`` is the task's ordered class list; ``logits`` has one entry per class, in that order (the paper's
  step 1: the largest logit over each class's matching tokens and output positions).
- ``label`` is the true class, or ``null`` when the item has no human label yet.
- ``answer`` is the class the LLM answered (``null``: the argmax of ``logits``).
- ``cost`` is what asking this LLM about this item cost, in the LLM's configured unit (seconds by default).

In memory a task is a :class:`TaskScores`: arrays aligned on the items that every LLM scored, LLMs ordered
from cheapest to most expensive (mean cost).
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

REQUIRED_FIELDS = ("task", "item", "llm", "classes", "logits")


class ScoresFormatError(ValueError):
    """A scores file or row that does not follow the documented format."""


@dataclass(frozen=True)
class TaskScores:
    """All LLMs' scores for one task, aligned on items.

    Attributes:
        name: the task's name.
        classes: the ordered class names (C of them).
        items: item ids, shape (n,).
        labels: index of the true class per item, -1 where unlabeled, shape (n,).
        llms: LLM names, cheapest first (L of them).
        logits: class logits, shape (L, n, C).
        answers: index of each LLM's answer, shape (L, n).
        costs: cost of each call, shape (L, n).
        description: one sentence that describes the task (used to find similar tasks).
    """

    name: str
    classes: tuple[str, ...]
    items: np.ndarray
    labels: np.ndarray
    llms: tuple[str, ...]
    logits: np.ndarray
    answers: np.ndarray
    costs: np.ndarray
    description: str = ""

    def __post_init__(self) -> None:
        n_llms, n_items, n_classes = self.logits.shape
        if n_classes != len(self.classes) or n_llms != len(self.llms) or n_items != len(self.items):
            raise ScoresFormatError(
                f"task {self.name!r}: logits shape {self.logits.shape} does not match "
                f"{len(self.llms)} LLMs x {len(self.items)} items x {len(self.classes)} classes"
            )
        if self.answers.shape != (n_llms, n_items) or self.costs.shape != (n_llms, n_items):
            raise ScoresFormatError(f"task {self.name!r}: answers/costs must have shape {(n_llms, n_items)}")
        if self.labels.shape != (n_items,):
            raise ScoresFormatError(f"task {self.name!r}: labels must have shape {(n_items,)}")

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def labeled(self) -> np.ndarray:
        """Boolean mask of the items with a true label."""
        return self.labels >= 0

    def llm_index(self, llm: str) -> int:
        try:
            return self.llms.index(llm)
        except ValueError:
            raise KeyError(
                f"task {self.name!r} has no scores from LLM {llm!r}; it has {list(self.llms)}"
            ) from None

    def subset(self, index: np.ndarray) -> TaskScores:
        """The same task restricted to some items (a boolean mask or integer indices)."""
        return TaskScores(
            name=self.name,
            classes=self.classes,
            items=self.items[index],
            labels=self.labels[index],
            llms=self.llms,
            logits=self.logits[:, index],
            answers=self.answers[:, index],
            costs=self.costs[:, index],
            description=self.description,
        )


@dataclass
class ScoresTable:
    """Every task's :class:`TaskScores`, by task name, in the order first seen."""

    tasks: dict[str, TaskScores] = field(default_factory=dict)

    def __iter__(self) -> Iterator[TaskScores]:
        return iter(self.tasks.values())

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, name: str) -> TaskScores:
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(f"no task {name!r} in the scores table; it has {list(self.tasks)}") from None

    @property
    def llms(self) -> tuple[str, ...]:
        """LLMs that scored every task, cheapest first (by mean cost over all tasks)."""
        if not self.tasks:
            return ()
        common = set.intersection(*(set(t.llms) for t in self))
        mean_cost = {
            llm: float(np.mean([t.costs[t.llm_index(llm)].mean() for t in self if t.n_items]))
            for llm in common
        }
        return tuple(sorted(common, key=lambda llm: (mean_cost[llm], llm)))

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]], descriptions: Mapping[str, str] | None = None
    ) -> ScoresTable:
        """Build the table from row dicts (see the module docstring), validating each row."""
        per_task: dict[str, dict[str, Any]] = {}
        for line_no, row in enumerate(rows, start=1):
            _check_row(row, line_no)
            task = str(row["task"])
            classes = tuple(str(c) for c in row["classes"])
            entry = per_task.setdefault(
                task, {"classes": classes, "cells": {}, "labels": {}, "item_order": {}}
            )
            if entry["classes"] != classes:
                raise ScoresFormatError(
                    f"row {line_no}: task {task!r} has classes {list(entry['classes'])} in earlier rows "
                    f"but {list(classes)} here"
                )
            item, llm = str(row["item"]), str(row["llm"])
            logits = np.asarray(row["logits"], dtype=np.float64)
            if logits.shape != (len(classes),):
                raise ScoresFormatError(
                    f"row {line_no}: {len(classes)} classes but {logits.size} logits for item {item!r}, LLM {llm!r}"
                )
            if np.isnan(logits).any():
                raise ScoresFormatError(f"row {line_no}: NaN logit for item {item!r}, LLM {llm!r}")
            answer = row.get("answer")
            if answer is None:
                answer_index = int(np.argmax(logits))
            elif answer in classes:
                answer_index = classes.index(answer)
            else:
                raise ScoresFormatError(f"row {line_no}: answer {answer!r} is not one of {list(classes)}")
            label = row.get("label")
            if label is not None:
                if label not in classes:
                    raise ScoresFormatError(f"row {line_no}: label {label!r} is not one of {list(classes)}")
                previous = entry["labels"].get(item)
                if previous is not None and previous != classes.index(label):
                    raise ScoresFormatError(f"row {line_no}: item {item!r} has two different labels")
                entry["labels"][item] = classes.index(label)
            entry["item_order"].setdefault(item, len(entry["item_order"]))
            cost = float(row.get("cost", 0.0) or 0.0)
            if not math.isfinite(cost) or cost < 0:
                raise ScoresFormatError(f"row {line_no}: cost must be a finite number >= 0, got {cost!r}")
            entry["cells"].setdefault(llm, {})[item] = (logits, answer_index, cost)

        table = cls()
        for task, entry in per_task.items():
            table.tasks[task] = _assemble_task(task, entry, (descriptions or {}).get(task, ""))
        return table

    def to_rows(self) -> Iterator[dict[str, Any]]:
        for t in self:
            for li, llm in enumerate(t.llms):
                for i, item in enumerate(t.items):
                    yield {
                        "task": t.name,
                        "item": str(item),
                        "llm": llm,
                        "classes": list(t.classes),
                        "label": t.classes[t.labels[i]] if t.labels[i] >= 0 else None,
                        "answer": t.classes[t.answers[li, i]],
                        "logits": [float(x) for x in t.logits[li, i]],
                        "cost": float(t.costs[li, i]),
                    }


def _check_row(row: Mapping[str, Any], line_no: int) -> None:
    if not isinstance(row, Mapping):
        raise ScoresFormatError(f"row {line_no}: expected a JSON object, got {type(row).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in row]
    if missing:
        raise ScoresFormatError(f"row {line_no}: missing field(s) {missing}")
    classes = row["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) != len(classes):
        raise ScoresFormatError(f"row {line_no}: 'classes' must be a list of at least 2 distinct names")


def _assemble_task(task: str, entry: dict[str, Any], description: str) -> TaskScores:
    cells: dict[str, dict[str, tuple[np.ndarray, int, float]]] = entry["cells"]
    common = set.intersection(*(set(by_item) for by_item in cells.values()))
    every = set(entry["item_order"])
    if common != every:
        warnings.warn(
            f"task {task!r}: {len(every) - len(common)} item(s) lack scores from some LLM and are left out",
            stacklevel=3,
        )
    if not common:
        raise ScoresFormatError(f"task {task!r}: no item was scored by every LLM")
    items = sorted(common, key=entry["item_order"].__getitem__)
    mean_cost = {llm: float(np.mean([by_item[i][2] for i in items])) for llm, by_item in cells.items()}
    llms = sorted(cells, key=lambda llm: (mean_cost[llm], llm))
    logits = np.stack([np.stack([cells[llm][i][0] for i in items]) for llm in llms])
    answers = np.array([[cells[llm][i][1] for i in items] for llm in llms], dtype=np.int64)
    costs = np.array([[cells[llm][i][2] for i in items] for llm in llms], dtype=np.float64)
    labels = np.array([entry["labels"].get(i, -1) for i in items], dtype=np.int64)
    return TaskScores(
        name=task,
        classes=entry["classes"],
        items=np.array(items, dtype=object),
        labels=labels,
        llms=tuple(llms),
        logits=logits,
        answers=answers,
        costs=costs,
        description=description,
    )


def _open_text(path: Path, mode: str, gz: bool) -> IO[str]:
    if gz:
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a scores file, with the line number in any parse error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scores file {path} does not exist")
    with _open_text(path, "r", path.suffix == ".gz") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ScoresFormatError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None


def read_scores(path: str | Path, descriptions: Mapping[str, str] | None = None) -> ScoresTable:
    """Read a scores file (JSON Lines, optionally ``.gz``)."""
    return ScoresTable.from_rows(iter_rows(path), descriptions)


def write_scores(table: ScoresTable | Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write a scores table (or rows) to ``path`` atomically."""
    path = Path(path)
    rows = table.to_rows() if isinstance(table, ScoresTable) else table
    tmp = path.with_name(path.name + ".tmp")
    with _open_text(tmp, "w", path.suffix == ".gz") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    tmp.replace(path)
