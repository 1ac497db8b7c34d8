"""Data Manager views as Label Studio 1.23.2 stores them: their filters, their hidden columns and the titles of
the views the backend keeps (plain data; :class:`~ls_backend.labelstudio.project.LabelStudioProject` saves them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

REVIEW_VIEW = "Needs review"
CALIBRATION_VIEW = "Calibration sample"
ALL_TASKS_VIEW = "All tasks"

# Label Studio 1.23.2 computes a Data Manager column only when a view's hiddenColumns does not hide it (or, with
# no hiddenColumns at all, only the columns its filters and ordering use: the prediction and annotation columns of
# a view saved through the API stay empty then). These are the columns every view of the backend hides; the
# prediction score, results and model versions, the annotation results, annotators and completion stay computed.
HIDDEN_COLUMNS = [
    "tasks:inner_id",
    "tasks:annotations_ids",
    "tasks:cancelled_annotations",
    "tasks:file_upload",
    "tasks:storage_filename",
    "tasks:updated_at",
    "tasks:updated_by",
    "tasks:avg_lead_time",
    "tasks:draft_exists",
]


def review_view_filters(threshold: float) -> dict[str, Any]:
    """Data Manager filters of the "Needs review" view: the prediction score (Label Studio's ``predictions_score``
    column, the mean score of the task's predictions by the connected backend's model version) < threshold."""
    return {
        "conjunction": "and",
        "items": [
            {
                "filter": "filter:tasks:predictions_score",
                "operator": "less",
                "type": "Number",
                "value": float(threshold),
            }
        ],
    }


def task_id_filters(task_ids: Sequence[int]) -> dict[str, Any]:
    """Data Manager filters that select exactly these tasks (an ``or`` of ``id equal`` items; Label Studio 1.23.2
    has no "id in set" operator: its ``in`` is a min-max range)."""
    ids = sorted({int(t) for t in task_ids}) or [0]  # no task has id 0: an empty sample selects nothing
    return {
        "conjunction": "or",
        "items": [
            {"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": t} for t in ids
        ],
    }


def view_settings(title: str, filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """A Data Manager view's ``data``: title, filters and the hidden columns (the same in the Data Manager's table
    and in the labeling view's task list)."""
    data: dict[str, Any] = {
        "title": title,
        "hiddenColumns": {"explore": list(HIDDEN_COLUMNS), "labeling": list(HIDDEN_COLUMNS)},
    }
    if filters is not None:
        data["filters"] = dict(filters)
    return data
