"""Catching up from Label Studio's API: every annotation of a project, through label-studio-sdk.

Label Studio sends each webhook once, with a 1 s timeout, and never again: a label made while the backend was
down or slow reaches it only through the API. The server calls :func:`catch_up_from_label_studio` at start and on
START_TRAINING. Label Studio being down is not an error here: it returns None and logs why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ls_backend.loop.events import LabelingConfig
from ls_backend.loop.store import CatchUpResult, LabelStore

logger = logging.getLogger(__name__)


@dataclass
class ProjectAnnotations:
    """Every annotation of a project (as API dicts, each with its ``task`` id) and the task texts."""

    annotations: list[dict[str, Any]] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    n_tasks: int = 0


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    for method in ("model_dump", "dict"):
        dump = getattr(item, method, None)
        if callable(dump):
            return dict(dump())
    raise TypeError(f"cannot read a {type(item).__name__} from Label Studio as a dict")


def fetch_project_annotations(
    client: Any, project: int, data_key: str | None = None, page_size: int = 100
) -> ProjectAnnotations:
    """All annotations of ``project`` from ``client.tasks.list(project=..., fields="all")`` (a
    ``label_studio_sdk.LabelStudio`` client; any object with that method works). Raises what the client raises."""
    result = ProjectAnnotations()
    pages: Iterable[Any] = client.tasks.list(project=project, fields="all", page_size=page_size)
    for raw_task in pages:
        task = _as_dict(raw_task)
        result.n_tasks += 1
        task_id = task.get("id")
        data = task.get("data")
        if (
            data_key
            and isinstance(data, Mapping)
            and isinstance(data.get(data_key), str)
            and isinstance(task_id, int)
        ):
            result.texts[task_id] = data[data_key]
        for raw_annotation in task.get("annotations") or []:
            annotation = _as_dict(raw_annotation)
            if annotation.get("task") is None:
                annotation["task"] = task_id
            result.annotations.append(annotation)
    return result


def catch_up_from_label_studio(
    store: LabelStore, client: Any, project: int, config: LabelingConfig | None = None
) -> CatchUpResult | None:
    """Apply every annotation Label Studio holds for ``project`` to the store (a complete listing: annotations
    the store has but Label Studio no longer has are tombstoned). None when Label Studio cannot be read."""
    config = config or store.project_config(project)
    try:
        fetched = fetch_project_annotations(client, project, config.data_key if config else None)
    except Exception as e:  # the API client raises many kinds (httpx, ApiError, ...): all mean "not now"
        logger.warning(
            "catch-up of project %s from Label Studio failed: %s: %s", project, type(e).__name__, e
        )
        return None
    result = store.catch_up(project, fetched.annotations, texts=fetched.texts, config=config, complete=True)
    logger.info("catch-up of project %s: %d tasks read; %s", project, fetched.n_tasks, result)
    return result
