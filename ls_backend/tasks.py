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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
