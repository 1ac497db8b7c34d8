"""The Label Studio adapter: the only place that calls label-studio-sdk (``tests/test_architecture.py`` says so).

The rest of the backend gets plain data from it (dataclasses, dicts, ints) and never an SDK type. It imports
nothing from the project, so that both the learning loop (``loop``) and the server (``server``) may use it.

- :mod:`~ls_backend.labelstudio.access`: where Label Studio is (:class:`LabelStudioAccess`), the SDK client
  (:func:`connect`), its replies as dicts (:func:`as_dict`) and its failures (:func:`is_transient`).
- :mod:`~ls_backend.labelstudio.label_config`: what a project asks for, read from its labeling config with the
  SDK's parser (:func:`parse_label_config` -> :class:`LabelSpec`).
- :mod:`~ls_backend.labelstudio.project`: every call on one project (:class:`LabelStudioProject`): settings
  (model version, sampling, description), Data Manager views, annotations (catch-up, auto-accept), predictions
  (pre-annotation jobs); :class:`LabelStudioConnector` makes it from the access at hand.
- :mod:`~ls_backend.labelstudio.views`: the Data Manager views' filters and hidden columns, as data.
"""

from ls_backend.labelstudio.access import (
    API_KEY_ENV,
    URL_ENV,
    ClientFactory,
    LabelStudioAccess,
    as_dict,
    connect,
    error_text,
    is_transient,
    status_code,
)
from ls_backend.labelstudio.label_config import LabelConfigError, LabelSpec, parse_label_config
from ls_backend.labelstudio.project import (
    PAGE_SIZE,
    UNCERTAINTY_SAMPLING,
    CreatedAnnotation,
    LabelStudioConnector,
    LabelStudioProject,
    ListedTask,
    ProjectAnnotations,
    ProjectTexts,
    fetch_project_texts,
)
from ls_backend.labelstudio.views import (
    ALL_TASKS_VIEW,
    CALIBRATION_VIEW,
    HIDDEN_COLUMNS,
    REVIEW_VIEW,
    review_view_filters,
    task_id_filters,
    view_settings,
)

__all__ = [
    "ALL_TASKS_VIEW",
    "API_KEY_ENV",
    "CALIBRATION_VIEW",
    "HIDDEN_COLUMNS",
    "PAGE_SIZE",
    "REVIEW_VIEW",
    "UNCERTAINTY_SAMPLING",
    "URL_ENV",
    "ClientFactory",
    "CreatedAnnotation",
    "LabelConfigError",
    "LabelSpec",
    "LabelStudioAccess",
    "LabelStudioConnector",
    "LabelStudioProject",
    "ListedTask",
    "ProjectAnnotations",
    "ProjectTexts",
    "as_dict",
    "connect",
    "error_text",
    "fetch_project_texts",
    "is_transient",
    "parse_label_config",
    "review_view_filters",
    "status_code",
    "task_id_filters",
    "view_settings",
]
