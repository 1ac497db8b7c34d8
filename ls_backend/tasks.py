"""Task definitions: what is asked of the LLMs and which classes answer it.

A tasks file is YAML (or JSON)::

    tasks:
      sms_spam:
        question: "Is this SMS message spam?"
        classes: ["yes", "no"]
        description: "Decide whether a short text message is unsolicited advertising or a scam."
        examples:                       # optional labeled examples for few-shot prompts
          - ["WINNER!! Claim your prize now, call 0906...", "yes"]
          - ["Ok, see you at 7 then.", "no"]

``question`` is put to the LLMs, ``classes`` are the answers in a fixed order (the order of every logits
vector), ``description`` is one sentence about the task that out-of-task calibration uses to find similar tasks,
``examples`` are (text, class) pairs that LLMs configured for few-shot prompts put before the item.

An items file (:func:`read_items`, what ``lwc score`` and the benchmark's studies read) is JSON Lines, one item a
line: ``{"id": "17", "task": "sms_spam", "text": "...", "label": "yes"}`` (``label`` optional), validated against
the tasks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TaskSpecError(ValueError):
    """A task definition that is missing something or contradicts itself."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    question: str
    classes: tuple[str, ...]
    description: str = ""
    examples: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise TaskSpecError("a task needs a non-empty name")
        if not self.question.strip():
            raise TaskSpecError(f"task {self.name!r}: 'question' must not be empty")
        if len(self.classes) < 2:
            raise TaskSpecError(f"task {self.name!r}: needs at least 2 classes, got {list(self.classes)}")
        if len(set(self.classes)) != len(self.classes) or any(not c.strip() for c in self.classes):
            raise TaskSpecError(
                f"task {self.name!r}: classes must be distinct non-empty names: {list(self.classes)}"
            )
        for example in self.examples:
            if len(example) != 2 or not isinstance(example[0], str) or example[1] not in self.classes:
                raise TaskSpecError(
                    f"task {self.name!r}: each example must be a [text, class] pair with a class of "
                    f"{list(self.classes)}, got {example!r}"
                )

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> TaskSpec:
        if not isinstance(d, Mapping):
            raise TaskSpecError(f"task {name!r}: expected a mapping with 'question' and 'classes'")
        unknown = set(d) - {"question", "classes", "description", "examples"}
        if unknown:
            raise TaskSpecError(f"task {name!r}: unknown field(s) {sorted(unknown)}")
        for required in ("question", "classes"):
            if required not in d:
                raise TaskSpecError(f"task {name!r}: missing '{required}'")
        classes = d["classes"]
        if not isinstance(classes, list | tuple):
            raise TaskSpecError(f"task {name!r}: 'classes' must be a list")
        if any(isinstance(c, bool) for c in classes):
            # YAML 1.1 reads unquoted yes/no/on/off as booleans, which would silently rename the classes.
            raise TaskSpecError(
                f"task {name!r}: a class was read as a boolean; quote yes/no in YAML: ['yes', 'no']"
            )
        return cls(
            name=name,
            question=str(d["question"]),
            classes=tuple(str(c) for c in classes),
            description=str(d.get("description", "")),
            examples=tuple(tuple(e) if isinstance(e, list | tuple) else e for e in d.get("examples") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "question": self.question,
            "classes": list(self.classes),
            "description": self.description,
        }
        if self.examples:
            d["examples"] = [list(e) for e in self.examples]
        return d


def load_tasks(path: str | Path) -> dict[str, TaskSpec]:
    """Read a tasks file (YAML or JSON) into task specs by name."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tasks file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), Mapping) or not data["tasks"]:
        raise TaskSpecError(f"{path}: expected a top-level 'tasks' mapping with at least one task")
    return {str(name): TaskSpec.from_dict(str(name), spec) for name, spec in data["tasks"].items()}


class ItemsFormatError(ValueError):
    """An items file line that is not a valid item."""


@dataclass
class TaskItems:
    """The items of one task, in file order."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)


@dataclass
class ItemsFile:
    tasks: dict[str, TaskItems]
    n_empty: int


def read_items(path: str | Path, tasks: dict[str, TaskSpec]) -> ItemsFile:
    """Items by task from a JSON Lines file, validated against the tasks (errors name the line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"items file {path} does not exist")
    by_task: dict[str, TaskItems] = {}
    seen: dict[tuple[str, str], int] = {}
    n_empty = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ItemsFormatError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(item, dict):
                raise ItemsFormatError(f"{where}: expected a JSON object, got {type(item).__name__}")
            missing = [k for k in ("id", "task", "text") if k not in item]
            if missing:
                raise ItemsFormatError(f"{where}: missing field(s) {missing}")
            unknown = set(item) - {"id", "task", "text", "label"}
            if unknown:
                raise ItemsFormatError(
                    f"{where}: unknown field(s) {sorted(unknown)}; expected id, task, text, label"
                )
            item_id, task_name, text, label = item["id"], item["task"], item["text"], item.get("label")
            if isinstance(item_id, bool) or not isinstance(item_id, str | int) or str(item_id) == "":
                raise ItemsFormatError(
                    f"{where}: 'id' must be a non-empty string or an integer, got {item_id!r}"
                )
            if task_name not in tasks:
                raise ItemsFormatError(
                    f"{where}: unknown task {task_name!r}; the tasks file defines {sorted(tasks)}"
                )
            if not isinstance(text, str):
                raise ItemsFormatError(f"{where}: 'text' must be a string, got {type(text).__name__}")
            classes = tasks[task_name].classes
            if label is not None and label not in classes:
                raise ItemsFormatError(
                    f"{where}: label {label!r} is not one of task {task_name!r}'s classes {list(classes)}"
                )
            key = (task_name, str(item_id))
            if key in seen:
                raise ItemsFormatError(
                    f"{where}: duplicate item id {str(item_id)!r} in task {task_name!r} (first on line {seen[key]})"
                )
            seen[key] = line_no
            if not text.strip():
                log.warning("%s: item %r of task %r has empty text; skipped", where, str(item_id), task_name)
                n_empty += 1
                continue
            entry = by_task.setdefault(task_name, TaskItems())
            entry.ids.append(str(item_id))
            entry.texts.append(text)
            entry.labels.append(label)
    if not by_task:
        raise ItemsFormatError(
            f"{path}: no items to score" + (f" ({n_empty} with empty text)" if n_empty else "")
        )
    return ItemsFile(by_task, n_empty)
