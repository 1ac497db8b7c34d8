"""Label Studio webhook payloads and API annotations, read into plain records (pure: no I/O).

Label Studio 1.23.2 sends (see ``/work/shared/ls-protocol``): ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``
with ``annotation``, ``project`` and ``task`` objects; ``ANNOTATIONS_DELETED`` (plural) with ``annotations: [{id}]``;
``START_TRAINING`` with ``project``. An annotation becomes an :class:`AnnotationRecord`: its one chosen class, or
no label and the reason it is ignored (``was_cancelled``, ``no_choice``, ``several_choices``,
``label_outside_classes``). A payload this module cannot read raises :class:`MalformedEvent`, naming what is
wrong; the store records it as ignored with that message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

UPSERT_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_ACTION = "ANNOTATIONS_DELETED"
TRAIN_ACTION = "START_TRAINING"

IGNORE_REASONS = (
    "was_cancelled",
    "no_choice",
    "several_choices",
    "label_outside_classes",
    "malformed",
    "stale",
    "deleted",
    "unknown_action",
)
"""Why an annotation or an event gives no label (``stale``: an older version of an annotation arrived after a
newer one; ``deleted``: the annotation was deleted, so a late create/update does not bring it back)."""


class MalformedEvent(ValueError):
    """A webhook payload or API annotation that lacks what a label needs (the message says what)."""


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotation as the store keeps it.

    Attributes:
        annotation_id: Label Studio's annotation id (never reused).
        task_id: the task it labels.
        updated_at_us: its ``updated_at`` (else ``created_at``) in microseconds since the epoch, UTC: the order
            of its versions.
        label: the chosen class, or None when it gives no label.
        ignored_reason: why there is no label (one of :data:`IGNORE_REASONS`), None when there is one.
        completed_by: the annotator's user id, if given.
        ground_truth: whether Label Studio marks it as ground truth.
        created_at_us: its ``created_at`` in microseconds (None if absent).
    """

    annotation_id: int
    task_id: int
    updated_at_us: int
    label: str | None
    ignored_reason: str | None
    completed_by: int | None = None
    ground_truth: bool = False
    created_at_us: int | None = None


@dataclass(frozen=True)
class LabelingConfig:
    """What labels a project accepts: its classes (values and aliases) and the task data key of its text."""

    classes: tuple[str, ...]
    data_key: str | None = None
    from_name: str | None = None


def parse_timestamp_us(value: Any, what: str = "timestamp") -> int:
    """An ISO 8601 timestamp as Label Studio writes it (``2026-11-28T14:12:32.014409Z``) in microseconds, UTC."""
    if not isinstance(value, str) or not value.strip():
        raise MalformedEvent(f"{what} must be an ISO 8601 string, got {value!r}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedEvent(f"{what} is not an ISO 8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def labeling_config_of(project: Any) -> LabelingConfig | None:
    """The classes and text key of a webhook's ``project`` object, from its ``parsed_label_config``.

    None when the payload carries no parsed config. With several ``Choices`` controls, the classes of all of them
    are accepted (the store cannot tell which one the backend labels; the server's configuration can).
    """
    if not isinstance(project, Mapping):
        return None
    parsed = project.get("parsed_label_config")
    if not isinstance(parsed, Mapping):
        return None
    classes: list[str] = []
    data_key = from_name = None
    for name, control in parsed.items():
        if not isinstance(control, Mapping) or control.get("type") != "Choices":
            continue
        from_name = from_name or str(name)
        for label in control.get("labels") or []:
            classes.append(str(label))
        for attrs in (control.get("labels_attrs") or {}).values():
            if isinstance(attrs, Mapping) and isinstance(attrs.get("alias"), str):
                classes.append(attrs["alias"])
        inputs = control.get("inputs") or []
        if data_key is None and inputs and isinstance(inputs[0], Mapping) and inputs[0].get("value"):
            data_key = str(inputs[0]["value"])
    if not classes:
        return None
    return LabelingConfig(tuple(dict.fromkeys(classes)), data_key, from_name)


def _int_field(mapping: Mapping[str, Any], key: str, what: str) -> int:
    value = mapping.get(key)
    if isinstance(value, Mapping):  # the API may nest {"id": ...}
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise MalformedEvent(f"{what}.{key} must be an integer id, got {value!r}")
    return int(value)


def chosen_labels(result: Any, from_name: str | None = None) -> list[str]:
    """The choices an annotation's ``result`` selects (of the ``from_name`` control when given)."""
    if result is None:
        return []
    if not isinstance(result, Sequence) or isinstance(result, str | bytes):
        raise MalformedEvent(f"annotation.result must be a list, got {type(result).__name__}")
    chosen: list[str] = []
    for region in result:
        if not isinstance(region, Mapping):
            raise MalformedEvent(f"annotation.result holds a {type(region).__name__}, not an object")
        if region.get("type") != "choices":
            continue
        if from_name is not None and region.get("from_name") not in (None, from_name):
            continue
        value = region.get("value")
        choices = value.get("choices") if isinstance(value, Mapping) else None
        if isinstance(choices, Sequence) and not isinstance(choices, str):
            chosen.extend(str(c) for c in choices)
    return chosen


def annotation_record(annotation: Any, config: LabelingConfig | None) -> AnnotationRecord:
    """Read one annotation object (webhook ``annotation`` or one of the API's ``task.annotations``).

    ``config`` None accepts any single choice as a label (the classes are checked when training).
    """
    if not isinstance(annotation, Mapping):
        raise MalformedEvent(f"annotation must be an object, got {type(annotation).__name__}")
    annotation_id = _int_field(annotation, "id", "annotation")
    task_id = _int_field(annotation, "task", "annotation")
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    updated_at_us = parse_timestamp_us(stamp, "annotation.updated_at")
    created = annotation.get("created_at")
    created_at_us = parse_timestamp_us(created, "annotation.created_at") if created else None
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("id")

    def record(label: str | None, reason: str | None) -> AnnotationRecord:
        return AnnotationRecord(
            annotation_id=annotation_id,
            task_id=task_id,
            updated_at_us=updated_at_us,
            label=label,
            ignored_reason=reason,
            completed_by=int(completed_by) if isinstance(completed_by, int) else None,
            ground_truth=bool(annotation.get("ground_truth", False)),
            created_at_us=created_at_us,
        )

    if annotation.get("was_cancelled"):
        return record(None, "was_cancelled")
    chosen = list(
        dict.fromkeys(chosen_labels(annotation.get("result"), config.from_name if config else None))
    )
    if not chosen:
        return record(None, "no_choice")
    if len(chosen) > 1:
        return record(None, "several_choices")
    if config is not None and chosen[0] not in config.classes:
        return record(None, "label_outside_classes")
    return record(chosen[0], None)


def project_id_of(payload: Mapping[str, Any]) -> int | None:
    """The numeric Label Studio project id of a webhook payload (None when it has none)."""
    project = payload.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    if isinstance(project, int) and not isinstance(project, bool):
        return project
    if isinstance(project, str) and project.split(".", 1)[0].isdigit():
        return int(project.split(".", 1)[0])
    annotation = payload.get("annotation")
    if isinstance(annotation, Mapping) and isinstance(annotation.get("project"), int):
        return int(annotation["project"])
    return None


def deleted_ids(payload: Mapping[str, Any]) -> list[int]:
    """The annotation ids of an ``ANNOTATIONS_DELETED`` payload."""
    items = payload.get("annotations")
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise MalformedEvent("ANNOTATIONS_DELETED needs a non-empty 'annotations' list of {id}")
    return [
        _int_field(item, "id", "annotations[]") if isinstance(item, Mapping) else _bad_id(item)
        for item in items
    ]


def _bad_id(item: Any) -> int:
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    raise MalformedEvent(f"ANNOTATIONS_DELETED: each entry must be an object with an id, got {item!r}")


def task_text(task: Any, config: LabelingConfig | None) -> str | None:
    """The text a task shows the annotator (``task.data[data_key]``), None when it cannot be read."""
    if not isinstance(task, Mapping) or config is None or config.data_key is None:
        return None
    data = task.get("data")
    value = data.get(config.data_key) if isinstance(data, Mapping) else None
    return value if isinstance(value, str) else None
