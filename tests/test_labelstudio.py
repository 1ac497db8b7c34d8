"""The Label Studio adapter (ls_backend/labelstudio/) without a Label Studio: labeling configs read with the SDK's
parser, the access from the environment, and each project call over a small fake of the SDK client (the
end-to-end tests make the same calls against a real Label Studio 1.23.2)."""

from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from ls_backend.labelstudio import (
    ALL_TASKS_VIEW,
    REVIEW_VIEW,
    UNCERTAINTY_SAMPLING,
    CreatedAnnotation,
    LabelConfigError,
    LabelStudioAccess,
    LabelStudioConnector,
    LabelStudioProject,
    ListedTask,
    as_dict,
    error_text,
    is_transient,
    parse_label_config,
    review_view_filters,
    view_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# labeling configs


def test_shipped_label_configs() -> None:
    binary = parse_label_config((REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text())
    assert (binary.from_name, binary.to_name, binary.data_key, binary.choices) == (
        "label",
        "text",
        "text",
        ("yes", "no"),
    )
    topics = parse_label_config((REPO_ROOT / "label_config" / "multiclass.xml").read_text())
    assert topics.choices == ("sport", "business", "politics", "tech", "entertainment")
    assert topics.result("tech") == [
        {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": ["tech"]}}
    ]
    with pytest.raises(ValueError, match="not one of"):
        topics.result("weather")


def test_alias_is_the_stored_choice_and_value_the_word_asked() -> None:
    spec = parse_label_config(
        '<View><Text name="doc" value="$body"/><Choices name="c" toName="doc" choice="multiple">'
        '<Choice value="positive" alias="POS"/><Choice value="negative" alias="NEG"/></Choices></View>'
    )
    assert spec.data_key == "body" and spec.to_name == "doc"
    assert spec.choices == ("POS", "NEG") and spec.class_words == ("positive", "negative") and spec.multiple


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "empty"),
        ("<View><Text", "does not parse"),
        ('<View><Text name="t" value="$text"/></View>', "no <Choices>"),
        (
            '<View><Image name="i" value="$img"/><Choices name="c" toName="i"><Choice value="a"/>'
            '<Choice value="b"/></Choices></View>',
            "exactly one <Text>",
        ),
        (
            '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>',
            "at least 2",
        ),
        (
            '<View><Text name="t" value="$text"/><Choices name="c" toName="t" value="$options"/></View>',
            "from task data",
        ),
        (
            '<View><Text name="t" value="plain"/><Choices name="c" toName="t"><Choice value="a"/>'
            '<Choice value="b"/></Choices></View>',
            "data key",
        ),
    ],
)
def test_label_configs_the_backend_cannot_label(config: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=re.escape(message)):
        parse_label_config(config)


def test_access_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    assert LabelStudioAccess.from_env() is None
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://label-studio:8080/")
    assert LabelStudioAccess.from_env() == LabelStudioAccess("http://label-studio:8080", "k")


# ---------------------------------------------------------------------------------------------------------------
# replies as plain data


class _Model:
    """What the SDK returns: a pydantic model (``model_dump``)."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def model_dump(self) -> dict[str, Any]:
        return dict(self.fields)


def test_replies_read_as_dicts_and_an_unreadable_one_is_an_error() -> None:
    assert as_dict({"id": 1}) == {"id": 1} and as_dict(_Model(id=2)) == {"id": 2} and as_dict(None) == {}
    with pytest.raises(TypeError, match="cannot read a int"):
        as_dict(3)


class _ApiError(Exception):
    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"status {status_code}")
        self.status_code, self.body = status_code, body


def test_failures_are_transient_or_final() -> None:
    assert is_transient(_ApiError(503, "busy")) and is_transient(_ApiError(429, "slow down"))
    assert not is_transient(_ApiError(400, {"task": "invalid"})) and not is_transient(KeyError("bug"))
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert error_text(_ApiError(400, {"task": "invalid"})) == "{'task': 'invalid'}"
    assert error_text(ValueError("plain")) == "plain"


# ---------------------------------------------------------------------------------------------------------------
# one project's calls, over a fake SDK client


class _Views:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def list(self, project: int) -> list[_Model]:
        return [_Model(**copy.deepcopy(v)) for v in self.items if v["project"] == project]

    def create(self, project: int, data: dict[str, Any]) -> _Model:
        self.items.append({"id": len(self.items) + 1, "project": project, "data": copy.deepcopy(data)})
        return _Model(**self.items[-1])

    def update(self, id: str, project: int, data: dict[str, Any]) -> None:
        (view,) = [v for v in self.items if str(v["id"]) == id and v["project"] == project]
        view["data"] = copy.deepcopy(data)


class _Projects:
    def __init__(self) -> None:
        self.settings: dict[int, dict[str, Any]] = {}
        self.imported: list[dict[str, Any]] = []

    def update(self, id: int, **fields: Any) -> None:
        self.settings.setdefault(id, {}).update(fields)

    def get(self, id: int) -> _Model:
        return _Model(description="<p>Is this <b>spam</b>?</p>", expert_instruction=None)

    def import_predictions(self, id: int, request: list[dict[str, Any]]) -> _Model:
        self.imported += request
        return _Model(created=len(request))


class _Tasks:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks = tasks

    def list(self, project: int, fields: str, page_size: int) -> list[_Model]:
        assert fields == "all"
        return [_Model(**t) for t in self.tasks]


class _Annotations:
    def create(self, id: int, result: list[dict[str, Any]]) -> _Model:
        stamp = dt.datetime(2026, 11, 28, 11, 0, tzinfo=dt.UTC)
        return _Model(id=900 + id, task=id, result=result, updated_at=stamp)


class _Predictions:
    def __init__(self) -> None:
        self.items = {
            7: {"id": 7, "task": 1, "model_version": "v1"},
            8: {"id": 8, "task": 2, "model_version": "v2"},
        }

    def list(self, project: int) -> list[_Model]:
        return [_Model(**p) for p in self.items.values()]

    def delete(self, id: int) -> None:
        if id not in self.items:
            raise _ApiError(404, "not found")
        del self.items[id]


class _Client:
    def __init__(self, tasks: list[dict[str, Any]] | None = None) -> None:
        self.views, self.projects, self.tasks = _Views(), _Projects(), _Tasks(tasks or [])
        self.annotations, self.predictions = _Annotations(), _Predictions()


def test_views_are_kept_one_per_title_with_an_unfiltered_tab() -> None:
    client = _Client()
    project = LabelStudioProject(client, 3)
    assert project.ensure_unfiltered_view() == 1 and project.ensure_unfiltered_view() is None
    first = project.upsert_view(REVIEW_VIEW, review_view_filters(0.5))
    assert project.upsert_view(REVIEW_VIEW, review_view_filters(0.9)) == first  # updated, not a second one
    every, review = client.views.items
    assert every["data"] == view_settings(ALL_TASKS_VIEW, None)
    assert review["data"] == view_settings(REVIEW_VIEW, review_view_filters(0.9))
    assert (
        LabelStudioProject(client, 4).upsert_view(REVIEW_VIEW, review_view_filters(0.5)) == 3
    )  # per project


def test_project_settings_texts_and_annotations() -> None:
    client = _Client()
    project = LabelStudioProject(client, 3)
    project.set_model_version("v2")
    project.use_uncertainty_sampling()
    assert client.projects.settings[3] == {"model_version": "v2", "sampling": UNCERTAINTY_SAMPLING}
    texts = project.texts()
    assert texts.description == "<p>Is this <b>spam</b>?</p>" and texts.instruction is None
    made = project.annotate(5, [{"from_name": "label", "to_name": "text", "type": "choices"}])
    assert made == CreatedAnnotation(905, "2026-11-28T11:00:00+00:00")  # the SDK's datetime, as ISO 8601


def test_tasks_are_listed_with_texts_annotations_and_predictions() -> None:
    tasks = [
        {
            "id": 1,
            "data": {"text": "win a prize"},
            "annotations": [{"id": 11, "result": []}],
            "predictions": [
                {"id": 7, "model_version": "v1", "score": 0.75},
                {"id": 9, "model_version": "v1"},
            ],
        },
        {"id": 2, "data": {"text": "  "}, "annotations": [], "predictions": []},
        {"id": 3, "data": "not a dict"},
    ]
    project = LabelStudioProject(_Client(tasks), 3)
    listed = project.list_tasks("text")
    assert listed[0] == ListedTask(1, "win a prize", {7: "v1", 9: "v1"}, {7: 0.75, 9: None})
    assert listed[0].score_of("v1") is None and listed[0].score_of("v2") is None  # the newest (9) has none
    assert [t.text for t in listed[1:]] == [None, None]  # blank or unreadable: nothing to predict
    annotations = project.list_annotations("text")
    assert annotations.n_tasks == 3 and annotations.texts == {1: "win a prize", 2: "  "}
    assert annotations.annotations == [{"id": 11, "result": [], "task": 1}]


def test_predictions_are_created_found_and_deleted() -> None:
    client = _Client()
    project = LabelStudioProject(client, 3)
    items = [{"task": 1, "result": [], "score": 0.5, "model_version": "v2"}]
    assert project.create_predictions(items) == 1 and client.projects.imported == items
    assert project.predictions_of([1, 2], "v2") == {2: [8]}
    assert project.delete_prediction(8) is True and project.delete_prediction(8) is False  # gone: a 404


def test_the_connector_prefers_the_servers_access_to_the_one_setup_carried() -> None:
    made: list[LabelStudioAccess] = []

    def factory(access: LabelStudioAccess) -> _Client:
        made.append(access)
        return _Client()

    carried = LabelStudioAccess("http://from-setup:8080", "t")
    assert LabelStudioConnector(None, factory).project(3) is None
    project = LabelStudioConnector(None, factory).project(3, carried)
    assert project is not None and project.project == 3 and made == [carried]
    server = LabelStudioAccess("http://label-studio:8080", "k")
    LabelStudioConnector(server, factory).project(3, carried)
    assert made[-1] == server
