"""Label Studio webhook payloads and API annotations, read into plain records (pure: no I/O).

Label Studio 1.23.2 sends (see the captures of the shared ``ls-protocol`` fixtures): ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``
with ``annotation``, ``project`` and ``task`` objects; ``ANNOTATIONS_DELETED`` (plural) with ``annotations: [{id}]``;
``START_TRAINING`` with ``project``. An annotation becomes an :class:`AnnotationRecord`: its one chosen class, or
no label and the reason it is ignored (``was_cancelled``, ``no_choice``, ``several_choices``,
``label_outside_classes``). A payload this module cannot read raises :class:`MalformedEvent`, naming what is
wrong; the store records it as ignored with that message. Every function here is total on any JSON value: it
returns or raises :class:`MalformedEvent`, never another error, so one odd payload cannot fail a batch of events.

Ids (annotations, tasks, projects, users) are read as Label Studio stores them: positive integers of at most 64
bits (Django's ``AutoField``/``BigAutoField``), given as JSON integers or ASCII decimal strings.
"""

from __future__ import annotations

from collections.abc import Mapping
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

MAX_ID = 2**63 - 1
"""The largest id Label Studio can hand out (a signed 64-bit primary key); SQLite's INTEGER holds it too."""


def label_studio_id(value: Any) -> int | None:
    """``value`` as a Label Studio id: a positive integer of at most 64 bits, given as a JSON integer or an ASCII
    decimal string (``"²"`` and ``"٣"`` pass ``str.isdigit()`` but are no id). None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 19 or not (text.isascii() and text.isdigit()):
            return None
        value = int(text)
    if not isinstance(value, int) or not 1 <= value <= MAX_ID:
        return None
    return value


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


def exceeds_depth(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests lists and objects deeper than ``limit`` levels (``{}`` is 1 level).

    Iterative, so it is safe on values nested deeper than Python's recursion limit (which would make a recursive
    walk, ``copy.deepcopy`` or ``json.dumps`` raise ``RecursionError``)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, Mapping | list | tuple))
    return False


def text_may_exceed_depth(text: str | bytes, limit: int) -> bool:
    """False when a JSON text cannot nest deeper than ``limit`` levels: it opens at most ``limit`` lists and
    objects in all (a count in C, so the walk of :func:`exceeds_depth` is only needed for the rare large body)."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > limit
    return text.count("[") + text.count("{") > limit


def parse_timestamp_us(value: Any, what: str = "timestamp") -> int:
    """An ISO 8601 timestamp as Label Studio writes it (``2026-11-28T14:12:32.014409Z``) in microseconds, UTC."""
    if not isinstance(value, str) or not value.strip():
        raise MalformedEvent(f"{what} must be an ISO 8601 string, got {_short(value)}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    except (
        ValueError,
        OverflowError,
    ):  # OverflowError: e.g. year 1 with a positive offset is before year 1 UTC
        raise MalformedEvent(f"{what} is not an ISO 8601 timestamp: {_short(value)}") from None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages that may quote a huge payload field."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
        labels = control.get("labels")
        if isinstance(labels, list):
            classes += [label for label in labels if isinstance(label, str)]
        attributes = control.get("labels_attrs")
        for attrs in attributes.values() if isinstance(attributes, Mapping) else ():
            if isinstance(attrs, Mapping) and isinstance(attrs.get("alias"), str):
                classes.append(attrs["alias"])
        inputs = control.get("inputs")
        first = inputs[0] if isinstance(inputs, list) and inputs else None
        if data_key is None and isinstance(first, Mapping) and isinstance(first.get("value"), str):
            data_key = first["value"] or None
    if not classes:
        return None
    return LabelingConfig(tuple(dict.fromkeys(classes)), data_key, from_name)


def _int_field(mapping: Mapping[str, Any], key: str, what: str) -> int:
    value = mapping.get(key)
    if isinstance(value, Mapping):  # the API may nest {"id": ...}
        value = value.get("id")
    checked = label_studio_id(value)
    if checked is None:
        raise MalformedEvent(
            f"{what}.{key} must be a Label Studio id (a positive 64-bit integer), got {_short(value)}"
        )
    return checked


def chosen_labels(result: Any, from_name: str | None = None) -> list[str]:
    """The choices an annotation's ``result`` selects (of the ``from_name`` control when given)."""
    if result is None:
        return []
    if not isinstance(result, list):
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
        if isinstance(choices, list):
            if not all(isinstance(c, str) for c in choices):
                raise MalformedEvent(f"annotation.result choices must be strings, got {_short(choices)}")
            chosen.extend(choices)
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
    if completed_by is not None and label_studio_id(completed_by) is None:
        raise MalformedEvent(
            f"annotation.completed_by must be a user id (a positive 64-bit integer) or null, got {_short(completed_by)}"
        )

    def record(label: str | None, reason: str | None) -> AnnotationRecord:
        return AnnotationRecord(
            annotation_id=annotation_id,
            task_id=task_id,
            updated_at_us=updated_at_us,
            label=label,
            ignored_reason=reason,
            completed_by=label_studio_id(completed_by),
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
    if isinstance(project, str):  # the ML backend's "<id>.<created_at>" form
        project = project.split(".", 1)[0]
    if project is not None:
        return label_studio_id(project)
    annotation = payload.get("annotation")
    if isinstance(annotation, Mapping):
        return label_studio_id(annotation.get("project"))
    return None


def deleted_ids(payload: Mapping[str, Any]) -> list[int]:
    """The annotation ids of an ``ANNOTATIONS_DELETED`` payload."""
    items = payload.get("annotations")
    if not isinstance(items, list) or not items:
        raise MalformedEvent("ANNOTATIONS_DELETED needs a non-empty 'annotations' list of {id}")
    return [
        _int_field(item, "id", "annotations[]") if isinstance(item, Mapping) else _bad_id(item)
        for item in items
    ]


def _bad_id(item: Any) -> int:
    checked = label_studio_id(item) if isinstance(item, int) else None
    if checked is None:
        raise MalformedEvent(
            f"ANNOTATIONS_DELETED: each entry must be an object with an id (a positive 64-bit integer), "
            f"got {_short(item)}"
        )
    return checked


def task_text(task: Any, config: LabelingConfig | None) -> str | None:
    """The text a task shows the annotator (``task.data[data_key]``), None when it cannot be read."""
    if not isinstance(task, Mapping) or config is None or config.data_key is None:
        return None
    data = task.get("data")
    value = data.get(config.data_key) if isinstance(data, Mapping) else None
    return value if isinstance(value, str) else None
