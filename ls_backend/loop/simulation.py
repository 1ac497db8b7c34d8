"""A simulated Label Studio project for tests, benchmarks and demos: synthetic LLM outputs
(:func:`ls_backend.synthetic.make_synthetic_scores`) behind a ``score_fn``, and webhook payloads shaped like the
ones Label Studio 1.23.2 sends (the shared ls-protocol captures 15..18)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from ls_backend.synthetic import make_synthetic_scores

BASE_TIME = datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)


def timestamp(seconds: float) -> str:
    """An ISO timestamp ``seconds`` after a fixed base time, written as Label Studio writes them."""
    return (BASE_TIME + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SyntheticProject:
    """One synthetic task: ``n`` texts with true labels and every LLM's answers, class logits and costs."""

    project: int
    classes: tuple[str, ...]
    llms: tuple[str, ...]
    task_ids: np.ndarray
    texts: list[str]
    labels: np.ndarray
    logits: np.ndarray  # (L, n, C)
    answers: np.ndarray  # (L, n)
    costs: np.ndarray  # (L, n)

    def __post_init__(self) -> None:
        self._index = {text: i for i, text in enumerate(self.texts)}
        self.calls = np.zeros(len(self.llms), dtype=np.int64)

    def index_of(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self._index[t] for t in texts], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"unknown text {e.args[0]!r}") from None

    def score_fn(self, k: int, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LLM k's answers, logits and costs for these texts (the trainer's ``score_fn``)."""
        index = self.index_of(texts)
        self.calls[k] += index.size
        return self.answers[k, index], self.logits[k, index], self.costs[k, index]

    def label_config(self) -> dict[str, Any]:
        """The ``project`` object of a webhook payload (the parts the loop reads)."""
        choices = "".join(f'<Choice value="{c}"/>' for c in self.classes)
        return {
            "id": self.project,
            "label_config": f'<View><Text name="text" value="$text"/><Choices name="label" toName="text">{choices}</Choices></View>',
            "parsed_label_config": {
                "label": {
                    "type": "Choices",
                    "to_name": ["text"],
                    "inputs": [{"type": "Text", "valueType": None, "value": "text"}],
                    "labels": list(self.classes),
                    "labels_attrs": {c: {"value": c} for c in self.classes},
                }
            },
        }

    def annotation_payload(
        self,
        position: int,
        annotation_id: int,
        *,
        choice: str | None = None,
        action: str = "ANNOTATION_CREATED",
        seconds: float = 0.0,
        was_cancelled: bool = False,
    ) -> dict[str, Any]:
        """A webhook for an annotation of the task at ``position``; ``choice`` defaults to the true label."""
        label = self.classes[int(self.labels[position])] if choice is None else choice
        task_id = int(self.task_ids[position])
        result = (
            []
            if was_cancelled
            else [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
        )
        return {
            "action": action,
            "annotation": {
                "id": annotation_id,
                "result": result,
                "was_cancelled": was_cancelled,
                "ground_truth": False,
                "created_at": timestamp(0.0),
                "updated_at": timestamp(seconds),
                "task": task_id,
                "project": self.project,
                "completed_by": 1,
            },
            "project": self.label_config(),
            "task": {"id": task_id, "data": {"text": self.texts[position]}, "project": self.project},
        }


def synthetic_project(
    n_items: int = 1000,
    seed: int = 0,
    project: int = 1,
    classes: Sequence[str] = ("yes", "no"),
    llms: Sequence[str] = ("small-llm", "medium-llm", "large-llm"),
) -> SyntheticProject:
    """A :class:`SyntheticProject` of ``n_items`` tasks (task ids 1..n, texts ``"task <id>"``)."""
    table = make_synthetic_scores(n_tasks=1, n_items=n_items, classes=classes, llms=llms, seed=seed)
    task = next(iter(table.tasks.values()))
    task_ids = np.arange(1, n_items + 1, dtype=np.int64)
    return SyntheticProject(
        project=project,
        classes=tuple(task.classes),
        llms=tuple(task.llms),
        task_ids=task_ids,
        texts=[f"task {i}" for i in task_ids],
        labels=np.asarray(task.labels, dtype=np.int64),
        logits=np.asarray(task.logits, dtype=np.float64),
        answers=np.asarray(task.answers, dtype=np.int64),
        costs=np.asarray(task.costs, dtype=np.float64),
    )
