"""The learning loop wired into the server, in-process: the real Flask app, the real CascadePredictor with a tiny
random-weight LLM, the real label store and version store; Label Studio's API is a small fake object with the
label-studio-sdk methods the loop calls (views, project settings, task listing). tests/test_learning_e2e.py runs
the same against a real Label Studio."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from ls_backend.cli import main
from ls_backend.labelstudio import (
    ALL_TASKS_VIEW,
    CALIBRATION_VIEW,
    REVIEW_VIEW,
    LabelStudioAccess,
    review_view_filters,
    task_id_filters,
    view_settings,
)
from ls_backend.loop import LabelStore, VersionStore
from ls_backend.server import CascadePredictor, create_app
from ls_backend.server.config import BackendConfig, ConfigError
from ls_backend.server.projects import ProjectDescriptions
from tests.prometheus_text import metric_samples, metric_value

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
PROJECT = 7
KEY = f"{PROJECT}.1795875050"
TEXTS = [
    f"message number {i} win a free prize now" if i % 3 == 0 else f"see you at lunch {i}" for i in range(31)
]  # indexed by task id; Label Studio's ids start at 1
TRUTH = ["yes" if i % 3 == 0 else "no" for i in range(31)]
FAST_LOOP = {
    "retrain_every": 0,
    "min_train_labels": 5,
    "min_calibration_labels": 5,
    "holdout_fraction": 0.3,
    "min_holdout_labels": 2,
    "accuracy_tolerance": 1.0,
    "ace_tolerance": 1.0,
    "n_trials": 5,
    "poll_s": 0.1,
    "catch_up_retry_s": 0.2,
}


class FakeViews:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def list(self, project: int) -> list[dict[str, Any]]:
        return [copy.deepcopy(v) for v in self.items if v["project"] == project]

    def create(self, project: int, data: dict[str, Any]) -> dict[str, Any]:
        view = {"id": len(self.items) + 1, "project": project, "data": copy.deepcopy(data)}
        self.items.append(view)
        return view

    def update(self, id: str, project: int, data: dict[str, Any]) -> dict[str, Any]:
        (view,) = [v for v in self.items if str(v["id"]) == id]
        view["data"] = copy.deepcopy(data)
        return view


class FakeProjects:
    def __init__(self) -> None:
        self.settings: dict[int, dict[str, Any]] = {}

    def update(self, id: int, **fields: Any) -> None:
        self.settings.setdefault(id, {}).update(fields)


class FakeTasks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.down = False

    def list(self, project: int, fields: str, page_size: int) -> list[dict[str, Any]]:
        if self.down:
            raise ConnectionError("Label Studio is down")
        return copy.deepcopy(self.items)


class FakeAnnotations:
    def __init__(self) -> None:
        self.made: list[dict[str, Any]] = []

    def create(self, id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        made = annotation(9000 + len(self.made), id, result[0]["value"]["choices"][0], "2026-11-28T11:00:00Z")
        self.made.append(made)
        return made


class FakeLabelStudio:
    def __init__(self) -> None:
        self.views, self.projects, self.tasks = FakeViews(), FakeProjects(), FakeTasks()
        self.annotations = FakeAnnotations()


def annotation(annotation_id: int, task_id: int, choice: str, stamp: str = "2026-11-28T10:00:00Z") -> dict:
    return {
        "id": annotation_id,
        "task": task_id,
        "project": PROJECT,
        "result": [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
        ],
        "was_cancelled": False,
        "created_at": stamp,
        "updated_at": stamp,
    }


def webhook(action: str, **body: Any) -> dict[str, Any]:
    return {"action": action, "project": {"id": PROJECT}, **body}


@pytest.fixture()
def config(tiny_llm_dir: Path, oot_table: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "llms": [{"name": "tiny-a", "kind": "hf", "model": str(tiny_llm_dir), "batch_size": 32}],
        "model_dir": str(tmp_path / "models"),
        "oot_scores": str(oot_table),
        "cascade": {"similar_tasks": False},
        "loop": {"review_threshold": 0.5, **FAST_LOOP},
    }


@pytest.fixture(scope="module")
def predictor() -> CascadePredictor:
    return CascadePredictor()  # the tiny model loads once for the module


def make_app(config: dict[str, Any], predictor: CascadePredictor, fake: FakeLabelStudio) -> Any:
    app = create_app(
        config, CascadePredictor(), auth=None, webhook_secret=None, descriptions=ProjectDescriptions(None)
    )
    learning = app.extensions["lwc"].learning
    learning.access = LabelStudioAccess("http://label-studio.invalid", "key")
    learning.client_factory = lambda access: fake
    # share the loaded tiny model between the apps of this module
    app.extensions["lwc"].predictor._slots = predictor._slots
    return app


def setup_body(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"project": KEY, "schema": BINARY, "hostname": "", "access_token": "", "extra_params": extra}


def predict(client: Any, ids: list[int]) -> list[dict[str, Any]]:
    tasks = [{"id": i, "data": {"text": TEXTS[i]}} for i in ids]
    reply = client.post("/predict", json={"tasks": tasks, "project": KEY, "label_config": BINARY})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return reply.get_json()["results"]


def wait_until(condition: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_predictions_are_routed_and_label_studio_gets_views_and_sampling(
    config: dict[str, Any], predictor: CascadePredictor
) -> None:
    fake = FakeLabelStudio()
    app = make_app(config, predictor, fake)
    client = app.test_client()
    oot = client.post("/setup", json=setup_body()).get_json()["model_version"]
    results = predict(client, list(range(1, 21)))
    scores = [r["score"] for r in results]
    assert {r["model_version"] for r in results} == {oot}
    learning = app.extensions["lwc"].learning
    assert learning.wait_idle()
    store = learning.store
    low = [i + 1 for i, s in enumerate(scores) if s < 0.5]
    assert store.requested_tasks(PROJECT, "review") == low
    status = client.get(f"/status?project={PROJECT}").get_json()
    assert status["bands"] == {"review": len(low), "trusted": 20 - len(low), "auto_accept": 0}
    assert status["serving"]["status"] == "initial" and status["serving"]["served_as"] == oot
    # one source of truth: the initial version holds exactly the out-of-task model that served
    initial = VersionStore(config["model_dir"], PROJECT).serving()
    assert initial.config["oot_version"] == oot
    served = learning.predictor.oot_model(learning.get(PROJECT).setup)
    assert initial.model.to_dict() == served.model.to_dict()
    # an unfiltered tab first (Label Studio makes its own "Default" only for a project without views), then the
    # review view; both with hiddenColumns, so Label Studio computes their prediction and annotation columns
    every, view = fake.views.items
    assert every["data"] == view_settings(ALL_TASKS_VIEW, None) and "filters" not in every["data"]
    assert view["data"] == view_settings(REVIEW_VIEW, review_view_filters(0.5))
    assert "tasks:predictions_score" not in view["data"]["hiddenColumns"]["explore"]
    assert fake.projects.settings[PROJECT] == {"sampling": "Uncertainty sampling", "model_version": oot}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert metric_value(metrics, "lwc_tasks_in_band", project=str(PROJECT), band="review") == len(low)
    assert [s.value for s in metric_samples(metrics, "lwc_serving_version_info", project=str(PROJECT))] == [1]
    assert metric_samples(metrics, "lwc_serving_version_info", project=str(PROJECT), version=oot)

    # a per-project threshold (extra_params) moves the band counts and updates the view (idempotently)
    client.post("/setup", json=setup_body({"loop": {"review_threshold": 0.9}}))
    assert learning.wait_idle()
    _, view = fake.views.items
    assert view["data"]["filters"] == review_view_filters(0.9)
    higher = client.get(f"/status?project={PROJECT}").get_json()["bands"]
    assert higher["review"] == sum(s < 0.9 for s in scores)
    # the tasks now under the threshold are marked for review too (the view shows them to annotators)
    assert store.requested_tasks(PROJECT, "review") == [i + 1 for i, s in enumerate(scores) if s < 0.9]


def test_webhooks_catch_up_retrain_serve_and_roll_back(
    config: dict[str, Any], predictor: CascadePredictor, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeLabelStudio()
    app = make_app(config, predictor, fake)
    client = app.test_client()
    oot = client.post("/setup", json=setup_body()).get_json()["model_version"]
    predict(client, list(range(1, 25)))
    learning = app.extensions["lwc"].learning
    store: LabelStore = learning.store
    for i in range(1, 21):
        reply = client.post(
            "/webhook", json=webhook("ANNOTATION_CREATED", annotation=annotation(100 + i, i, TRUTH[i]))
        )
        assert reply.get_json() == {"status": "ok", "action": "ANNOTATION_CREATED", "outcome": "applied"}
    again = client.post(
        "/webhook", json=webhook("ANNOTATION_CREATED", annotation=annotation(101, 1, TRUTH[1]))
    )
    assert again.get_json()["outcome"] == "duplicate"
    skipped = annotation(200, 21, "yes") | {"was_cancelled": True}
    assert client.post("/webhook", json=webhook("ANNOTATION_CREATED", annotation=skipped)).get_json()[
        "reason"
    ] == ("was_cancelled")
    assert len(store.labels(PROJECT)) == 20
    # Label Studio holds 3 more annotations the backend never got as webhooks; START_TRAINING catches up first
    fake.tasks.items = [
        {"id": i, "data": {"text": TEXTS[i]}, "annotations": [annotation(100 + i, i, TRUTH[i])]}
        for i in range(1, 24)
    ]
    reply = client.post("/webhook", json=webhook("START_TRAINING"))
    assert reply.get_json()["outcome"] == "retrain"
    versions = VersionStore(config["model_dir"], PROJECT)
    promoted = wait_until(lambda: versions.serving() if versions.serving().status == "promoted" else None)
    assert promoted.trigger == "START_TRAINING" and promoted.labels["n_labels"] == 23
    assert client.post("/setup", json=setup_body()).get_json()["model_version"] == promoted.name
    assert {r["model_version"] for r in predict(client, [25, 26])} == {promoted.name}
    assert client.get("/versions", json={"project": KEY}).get_json()["versions"] == sorted(
        {oot, promoted.name}
    )
    # an admin's `lwc rollback` takes effect at the next /setup and /predict: no cache in the way
    admin = ["--model-dir", config["model_dir"], "--project", str(PROJECT)]
    assert main(["rollback", *admin]) == 0
    assert client.post("/setup", json=setup_body()).get_json()["model_version"] == oot
    assert {r["model_version"] for r in predict(client, [27])} == {oot}
    assert main(["rollback", *admin, promoted.name]) == 0
    assert client.post("/setup", json=setup_body()).get_json()["model_version"] == promoted.name
    capsys.readouterr()
    assert main(["status", *admin, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["serving"]["name"] == promoted.name and status["labels_by_source"]["annotator"] == 23
    assert (
        status["retrain_every"] == 0 and sum(status["bands"].values()) == 27
    )  # the settings of project.json

    # a restarted server (a new app on the same model dir) knows the project before any /setup, serves the
    # promoted version, and catches up from Label Studio at start (here after Label Studio was down at first)
    fake.tasks.down = True
    fake.tasks.items.append(
        {"id": 28, "data": {"text": TEXTS[28]}, "annotations": [annotation(300, 28, "no")]}
    )
    restarted = make_app(config, predictor, fake)
    assert restarted.extensions["lwc"].learning.get(PROJECT) is not None
    assert (
        restarted.test_client().post("/setup", json=setup_body()).get_json()["model_version"] == promoted.name
    )
    time.sleep(0.3)
    fake.tasks.down = False
    wait_until(lambda: len(store.labels(PROJECT)) == 24)


def test_calibration_sample_marks_tasks_and_the_view(
    config: dict[str, Any], predictor: CascadePredictor
) -> None:
    fake = FakeLabelStudio()
    app = make_app(config, predictor, fake)
    client = app.test_client()
    client.post("/setup", json=setup_body())
    predict(client, list(range(1, 13)))
    client.post("/webhook", json=webhook("ANNOTATION_CREATED", annotation=annotation(1, 1, "yes")))
    drawn = client.post("/calibration-sample", json={"project": PROJECT, "k": 4, "method": "IE", "seed": 1})
    assert drawn.status_code == 200, drawn.get_data(as_text=True)
    body = drawn.get_json()
    sample = sorted(d["task"] for d in body["drawn"])
    assert body["pool"] == 11 and len(sample) == 4 and 1 not in sample  # task 1 is labeled already
    store: LabelStore = app.extensions["lwc"].learning.store
    assert store.requested_tasks(PROJECT, "calibration") == sample
    (view,) = [v for v in fake.views.items if v["data"]["title"] == CALIBRATION_VIEW]
    assert view["data"]["filters"] == task_id_filters(sample) and view["id"] == body["view"]
    # labels of those tasks are calibration labels, with their inclusion probabilities
    client.post("/webhook", json=webhook("ANNOTATION_CREATED", annotation=annotation(2, sample[0], "no")))
    labeled = store.labels(PROJECT)
    assert (
        dict(zip(labeled.task_ids.tolist(), labeled.sources.tolist(), strict=True))[sample[0]]
        == "calibration"
    )
    # `lwc calibration-sample` asks a running server over HTTP
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert (
            main(
                [
                    "calibration-sample",
                    "--project",
                    str(PROJECT),
                    "--k",
                    "2",
                    "--method",
                    "U",
                    "--server",
                    url,
                ]
            )
            == 0
        )
        assert len(store.requested_tasks(PROJECT, "calibration")) == 6
        assert main(["calibration-sample", "--project", "99", "--server", url]) != 0
    finally:
        server.shutdown()
    bad = client.post("/calibration-sample", json={"project": PROJECT, "k": 4, "method": "XX"})
    assert bad.status_code == 400 and "method" in bad.get_json()["error"]
    assert client.post("/calibration-sample", json={"project": 99, "k": 4}).status_code == 404
    assert client.get("/status?project=99").status_code == 404


def test_webhooks_of_unknown_projects_and_bad_payloads_are_stored(
    config: dict[str, Any], predictor: CascadePredictor
) -> None:
    app = make_app(config, predictor, FakeLabelStudio())
    client = app.test_client()
    other = {"action": "ANNOTATION_CREATED", "project": {"id": 55}, "annotation": annotation(9, 3, "yes")}
    assert client.post("/webhook", json=other).get_json()["outcome"] == "applied"
    assert client.post("/webhook", data=b"not json", content_type="application/json").status_code == 400
    store: LabelStore = app.extensions["lwc"].learning.store
    assert len(store.labels(55)) == 1
    assert any(e["outcome"] == "ignored" and e["reason"].startswith("malformed") for e in store.events())
    # one after the other, each event is a commit of its own; /metrics counts both
    metrics = client.get("/metrics").get_data(as_text=True)
    assert metric_value(metrics, "lwc_label_store_commits_total") == 2
    assert metric_value(metrics, "lwc_label_store_committed_events_total") == 2


def test_auto_accept_annotates_confident_tasks_that_never_train(
    config: dict[str, Any], predictor: CascadePredictor
) -> None:
    fake = FakeLabelStudio()
    app = make_app(config, predictor, fake)
    client = app.test_client()
    client.post("/setup", json=setup_body())
    scores = [r["score"] for r in predict(client, list(range(1, 13)))]
    threshold = sorted(scores)[6]  # the upper half is auto-accepted
    client.post(
        "/setup", json=setup_body({"loop": {"review_threshold": 0.0, "auto_accept_threshold": threshold}})
    )
    results = predict(client, list(range(1, 13)))
    learning = app.extensions["lwc"].learning
    assert learning.wait_idle()
    confident = {i + 1 for i, r in enumerate(results) if r["score"] >= threshold}
    assert {a["task"] for a in fake.annotations.made} == confident and confident
    for made in fake.annotations.made:  # Label Studio sends the webhook of the backend's own annotation
        client.post("/webhook", json=webhook("ANNOTATION_CREATED", annotation=made))
    store: LabelStore = learning.store
    assert store.counts(PROJECT)["labels_by_source"]["auto"] == len(confident)
    predict(client, list(range(1, 13)))  # predicted again: no second annotation
    assert learning.wait_idle() and len(fake.annotations.made) == len(confident)
    # a human who corrects an auto-accepted annotation makes it a human label again
    edited = fake.annotations.made[0] | {"updated_at": "2026-11-28T12:00:00Z"}
    client.post("/webhook", json=webhook("ANNOTATION_UPDATED", annotation=edited))
    assert store.counts(PROJECT)["labels_by_source"]["auto"] == len(confident) - 1
    assert client.get(f"/status?project={PROJECT}").get_json()["bands"]["auto_accept"] == len(confident)


def test_learning_settings_are_validated() -> None:
    assert BackendConfig.from_mapping({}).learning.review_threshold == 0.7
    settings = BackendConfig.from_mapping({"loop": {"review_threshold": 0.6, "auto_accept_threshold": 0.95}})
    assert (
        settings.learning.auto_accept_threshold == 0.95
        and settings.learning.loop_config().review_threshold == 0.6
    )
    for bad, message in [
        ({"nonsense": 1}, "nonsense"),
        ({"review_threshold": 1.5}, "review_threshold"),
        ({"review_threshold": 0.8, "auto_accept_threshold": 0.5}, "auto_accept_threshold"),
        ({"views": "yes"}, "views"),
        ({"poll_s": 0}, "poll_s"),
    ]:
        with pytest.raises(ConfigError, match=message):
            BackendConfig.from_mapping({"loop": bad})
    with pytest.raises(ConfigError, match="loop"):
        BackendConfig.from_mapping({"loop": [1]})
    assert json.loads(json.dumps(task_id_filters([]))) == task_id_filters([])
