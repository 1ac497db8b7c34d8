"""Every call the backend makes on one Label Studio project, over a label-studio-sdk client.

What Label Studio answers is turned into plain data here (:class:`ListedTask`, :class:`ProjectAnnotations`,
:class:`CreatedAnnotation`, :class:`ProjectTexts`, dicts, ints): no SDK type leaves this module. The client is
anything with the SDK's methods (tests pass small fakes); its failures are raised as the client raises them, for
the caller to judge with :func:`~ls_backend.labelstudio.access.is_transient`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ls_backend.labelstudio.access import ClientFactory, LabelStudioAccess, as_dict, connect, status_code
from ls_backend.labelstudio.views import ALL_TASKS_VIEW, view_settings

PAGE_SIZE = 100
UNCERTAINTY_SAMPLING = "Uncertainty sampling"  # ProjectSamplingEnum of label-studio-sdk 2.1.2 / LS 1.23.2


@dataclass(frozen=True)
class ListedTask:
    """A task as Label Studio lists it: id, text (None: nothing to read), its predictions (id -> version) and
    their scores (id -> score)."""

    task_id: int
    text: str | None
    predictions: Mapping[int, str] = field(default_factory=dict)
    scores: Mapping[int, float | None] = field(default_factory=dict)

    def score_of(self, version: str) -> float | None:
        """The score of the task's newest prediction of ``version`` (None: none, or no score)."""
        own = [p for p, v in self.predictions.items() if v == version]
        return self.scores.get(max(own)) if own else None


@dataclass
class ProjectAnnotations:
    """Every annotation of a project (as API dicts, each with its ``task`` id) and the task texts."""

    annotations: list[dict[str, Any]] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    n_tasks: int = 0


@dataclass(frozen=True)
class CreatedAnnotation:
    """An annotation Label Studio made for the backend: its id and when it was last updated (ISO 8601)."""

    annotation_id: int
    updated_at: str | None


@dataclass(frozen=True)
class ProjectTexts:
    """What a project tells its annotators: its description and its instructions (may be HTML; None: unset)."""

    description: str | None
    instruction: str | None


class LabelStudioProject:
    """One Label Studio project's API.

    Args:
        client: a label-studio-sdk ``LabelStudio`` client (or an object with the same methods).
        project: the project's numeric id.
        page_size: tasks per page when listing them.
    """

    def __init__(self, client: Any, project: int, page_size: int = PAGE_SIZE) -> None:
        self.client = client
        self.project = project
        self.page_size = page_size

    # ---- the project's settings

    def texts(self) -> ProjectTexts:
        details = as_dict(self.client.projects.get(id=self.project))
        return ProjectTexts(
            _text_or_none(details.get("description")), _text_or_none(details.get("expert_instruction"))
        )

    def set_model_version(self, model_version: str) -> None:
        """Make ``model_version`` the project's: the predictions annotators see and the ones the
        ``predictions_score`` column averages. Label Studio refuses a version it has neither as its ML backend's
        nor in stored predictions."""
        self.client.projects.update(id=self.project, model_version=model_version)

    def use_uncertainty_sampling(self) -> None:
        """Annotators get the tasks the model is least sure of first."""
        self.client.projects.update(id=self.project, sampling=UNCERTAINTY_SAMPLING)

    # ---- Data Manager views

    def ensure_unfiltered_view(self) -> int | None:
        """Make sure the project keeps a tab listing every task: Label Studio's frontend makes its "Default" tab
        only for a project without views, so once the backend adds "Needs review" there would be none. Creates
        "All tasks" (no filter) unless a view without filters exists; returns the id of the view it created."""
        for view in self.client.views.list(project=self.project):
            data = as_dict(view).get("data") or {}
            if not ((data.get("filters") or {}).get("items") or []):
                return None
        created = as_dict(
            self.client.views.create(project=self.project, data=view_settings(ALL_TASKS_VIEW, None))
        )
        return int(created["id"])

    def upsert_view(self, title: str, filters: Mapping[str, Any]) -> int:
        """Create the Data Manager view ``title`` with these filters, or update the one that exists (idempotent:
        one view per title). Returns its id."""
        data = view_settings(title, filters)
        for view in self.client.views.list(project=self.project):
            found = as_dict(view)
            if (found.get("data") or {}).get("title") == title:
                view_data = {**(found.get("data") or {}), **data}
                self.client.views.update(id=str(found["id"]), project=self.project, data=view_data)
                return int(found["id"])
        created = as_dict(self.client.views.create(project=self.project, data=data))
        return int(created["id"])

    # ---- annotations

    def annotate(self, task_id: int, result: list[dict[str, Any]]) -> CreatedAnnotation:
        """Annotate a task with this ``result`` (as the key's user)."""
        created = as_dict(self.client.annotations.create(id=task_id, result=result))
        stamp = created.get("updated_at") or created.get("created_at")
        if stamp is not None and not isinstance(stamp, str):
            stamp = stamp.isoformat()  # the SDK parses timestamps into datetimes
        return CreatedAnnotation(int(created["id"]), stamp)

    def list_annotations(self, data_key: str | None = None) -> ProjectAnnotations:
        """Every annotation of the project, task by task, with the tasks' texts under ``data_key``."""
        result = ProjectAnnotations()
        for task in self._tasks():
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
                annotation = as_dict(raw_annotation)
                if annotation.get("task") is None:  # the API nests annotations in their task
                    annotation["task"] = task_id
                result.annotations.append(annotation)
        return result

    # ---- predictions

    def list_tasks(self, data_key: str) -> list[ListedTask]:
        """Every task of the project, page by page, with its text and its predictions' versions."""
        tasks = []
        for task in self._tasks():
            data = task.get("data")
            text = data.get(data_key) if isinstance(data, Mapping) else None
            readable = isinstance(text, str) and bool(text.strip())
            predictions, scores = {}, {}
            for prediction in task.get("predictions") or []:
                p = as_dict(prediction)
                if isinstance(p.get("id"), int):
                    predictions[int(p["id"])] = str(p.get("model_version") or "")
                    score = p.get("score")
                    scores[int(p["id"])] = float(score) if isinstance(score, int | float) else None
            tasks.append(ListedTask(int(task["id"]), text if readable else None, predictions, scores))
        return tasks

    def create_predictions(self, items: Sequence[Mapping[str, Any]]) -> int:
        """Create predictions (``task``, ``result``, ``score``, ``model_version``) in one request."""
        reply = self.client.projects.import_predictions(id=self.project, request=[dict(i) for i in items])
        created = as_dict(reply).get("created")
        return int(created) if isinstance(created, int) else len(items)

    def create_prediction(self, item: Mapping[str, Any]) -> None:
        self.client.predictions.create(**dict(item))

    def predictions_of(self, task_ids: Sequence[int], version: str) -> dict[int, list[int]]:
        """The ids of the predictions of ``version`` these tasks hold now."""
        wanted = {int(t) for t in task_ids}
        found: dict[int, list[int]] = {}
        for prediction in self.client.predictions.list(project=self.project):
            p = as_dict(prediction)
            if p.get("task") in wanted and p.get("model_version") == version:
                found.setdefault(int(p["task"]), []).append(int(p["id"]))
        return found

    def delete_prediction(self, prediction_id: int) -> bool:
        """Delete one prediction; False when Label Studio has no such prediction (any more)."""
        try:
            self.client.predictions.delete(id=int(prediction_id))
        except Exception as e:
            if status_code(e) == 404:
                return False
            raise
        return True

    def _tasks(self) -> Iterable[dict[str, Any]]:
        pages = self.client.tasks.list(project=self.project, fields="all", page_size=self.page_size)
        for task in pages:
            yield as_dict(task)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class LabelStudioConnector:
    """Makes a project's :class:`LabelStudioProject` from the server's access (``LABEL_STUDIO_URL`` and
    ``LABEL_STUDIO_API_KEY``), else from the one a project's ``/setup`` carried.

    Args:
        access: the server's access (None: only what ``/setup`` carries).
        client_factory: makes a client from an access (tests pass one that returns a fake).
        timeout: seconds one call may take.
    """

    def __init__(
        self,
        access: LabelStudioAccess | None = None,
        client_factory: ClientFactory | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.access = access
        self.client_factory: ClientFactory = client_factory or (lambda a: connect(a, timeout))

    def project(self, number: int, fallback: LabelStudioAccess | None = None) -> LabelStudioProject | None:
        """The project's API, or None when there is no access to Label Studio at all."""
        access = self.access or fallback
        return LabelStudioProject(self.client_factory(access), number) if access is not None else None


def fetch_project_texts(access: LabelStudioAccess, project: int, timeout: float) -> ProjectTexts:
    """A project's description and instructions, failing at once when Label Studio does not answer."""
    return LabelStudioProject(connect(access, timeout, max_retries=0), project).texts()
