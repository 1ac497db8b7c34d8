"""The server against the ML backend protocol of Label Studio 1.23.2: every captured request replayed
(``shared/ls-protocol/captures`` beside the checkout), bad input, large and concurrent /predict calls.

The predictor is the real :class:`CascadePredictor` built from a config with two real but tiny LLMs: the Hugging
Face adapter on two 2-layer random-weight Llamas saved to local folders (``tiny_llm_dirs`` in conftest.py), and a
synthetic out-of-task scores table (``oot_table``: ``ls_backend.synthetic`` tasks scored by LLMs of the same names)
for the out-of-task calibrators and default policy. The answers are arbitrary but every step (prompts, class
logits, score cache, calibrators, staged cascade, results) is the real one.
Each prediction is also checked with label-studio-sdk's ``validate_prediction``, the check Label Studio runs before
it stores predictions (one invalid prediction makes it drop the whole batch).
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from label_studio_sdk.label_interface import LabelInterface
from prometheus_client.parser import text_string_to_metric_families

from ls_backend.labelstudio import LabelStudioAccess
from ls_backend.server import CascadePredictor, Prediction, ProjectSetup, create_app
from ls_backend.server.projects import ProjectDescriptions

torch.set_num_threads(1)

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "ls-protocol" / "captures"
REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
MULTICLASS = (REPO_ROOT / "label_config" / "multiclass.xml").read_text()
NO_CHOICES = '<View><Text name="text" value="$text"/><Header value="nothing to choose"/></View>'


def load_captures() -> list[dict[str, Any]]:
    files = sorted(CAPTURES.glob("*.json"))
    if not files:
        pytest.skip(f"no captures in {CAPTURES}")
    return [json.loads(f.read_text()) | {"file": f.name} for f in files]


class RecordingPredictor(CascadePredictor):
    """The real predictor, also keeping the projects it was asked about (to check questions and configs)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projects: list[ProjectSetup] = []

    def predict(self, project: ProjectSetup, texts: list[str]) -> list[Prediction]:
        self.projects.append(project)
        return super().predict(project, texts)


@pytest.fixture(scope="module")
def config(
    tiny_llm_dirs: list[Path], oot_table: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return {
        "llms": [
            {"name": name, "kind": "hf", "model": str(folder), "batch_size": 32}
            for name, folder in zip(("tiny-a", "tiny-b"), tiny_llm_dirs, strict=True)
        ],
        "model_dir": str(tmp_path_factory.mktemp("models")),
        "oot_scores": str(oot_table),
    }


@pytest.fixture(scope="module")
def predictor() -> RecordingPredictor:
    return RecordingPredictor()  # shared by the module's apps: the tiny model loads once


def make_app(config: Mapping[str, Any], predictor: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("auth", None)
    kwargs.setdefault("webhook_secret", None)
    kwargs.setdefault("descriptions", ProjectDescriptions(None))
    return create_app(dict(config), predictor, **kwargs)


@pytest.fixture()
def client(config: dict[str, Any], predictor: RecordingPredictor) -> Any:
    return make_app(config, predictor).test_client()


def predict_body(
    texts: list[Any], label_config: str = BINARY, project: str = "1.1795875050"
) -> dict[str, Any]:
    tasks = [{"id": i + 1, "data": {"text": t}, "project": 1} for i, t in enumerate(texts)]
    return {"tasks": tasks, "project": project, "label_config": label_config, "params": {"context": None}}


def check_results(reply: Any, tasks: list[Any], label_config: str, version: str | None = None) -> list[Any]:
    """The reply has the shape Label Studio stores: one entry per task, valid choices, scores in [0, 1]."""
    assert reply.status_code == 200, reply.get_data(as_text=True)
    results = reply.get_json()["results"]
    assert isinstance(results, list) and len(results) == len(tasks)
    interface = LabelInterface(label_config)
    (control,) = [c for c in interface.controls]
    for entry in results:
        for prediction in [entry] if isinstance(entry, dict) else entry:
            assert set(prediction) == {"result", "score", "model_version"}
            assert 0.0 <= prediction["score"] <= 1.0 and math.isfinite(prediction["score"])
            assert isinstance(prediction["model_version"], str) and prediction["model_version"]
            if version is not None:
                assert prediction["model_version"] == version
            for region in prediction["result"]:
                assert region["from_name"] == control.name and region["type"] == "choices"
                assert region["to_name"] == control.to_name[0]
                assert (
                    len(region["value"]["choices"]) == 1 and region["value"]["choices"][0] in control.labels
                )
            assert interface.validate_prediction(prediction, return_errors=True) == []
    return results


def choices_of(results: list[Any]) -> list[str | None]:
    return [
        r["result"][0]["value"]["choices"][0] if isinstance(r, dict) and r["result"] else None
        for r in results
    ]


# ---------------------------------------------------------------------------------------------------------------
# the captured protocol


def test_replays_every_captured_request(client: Any) -> None:
    version = None
    for capture in load_captures():
        method, path, body = capture["method"], capture["path"], capture["body"]
        started = time.perf_counter()
        reply = (
            client.open(path, method=method, json=body)
            if body is not None
            else client.open(path, method=method)
        )
        elapsed = time.perf_counter() - started
        assert reply.status_code == 200, (capture["file"], reply.get_data(as_text=True))
        payload = reply.get_json()
        if path == "/health":
            assert payload["status"] == "UP" and payload["model_class"] == "RecordingPredictor"
            assert elapsed < 1.0  # Label Studio's health timeout
        elif path == "/setup":
            assert isinstance(payload["model_version"], str) and payload["model_version"]
            # no labels yet, no project description: calibrated on all other tasks with the same classes
            assert payload["model_version"].startswith("oot-all-")
            assert version in (None, payload["model_version"])  # the same project gets the same version
            version = payload["model_version"]
            assert elapsed < 3.0  # Label Studio's setup timeout: no model loading here
        elif path == "/predict":
            results = check_results(reply, body["tasks"], body["label_config"], version)
            assert all(isinstance(r, dict) and r["result"] for r in results)  # every captured task has a text
        elif path == "/versions":
            assert payload == {"versions": [version]}
        elif path == "/webhook":
            assert payload["status"] == "ok" and payload["action"] == body["action"]
            # stored in the label store before the answer (the learning loop)
            assert payload["outcome"] in ("applied", "duplicate", "ignored", "retrain", "acknowledged")
            assert elapsed < 1.0  # Label Studio's webhook timeout
        else:
            pytest.fail(f"capture {capture['file']} calls an endpoint the test does not know: {path}")


def test_captured_predict_with_a_multiclass_config(client: Any) -> None:
    capture = next(c for c in load_captures() if c["path"] == "/predict")
    body = copy.deepcopy(capture["body"]) | {"label_config": MULTICLASS}
    body["tasks"] = [copy.deepcopy(body["tasks"][0]) for _ in range(4)]
    for task, text in zip(
        body["tasks"], ["the match ended in a draw", "shares fell today", "election", ""], strict=True
    ):
        task["data"]["text"] = text
    results = check_results(client.post("/predict", json=body), body["tasks"], MULTICLASS)
    assert results[3] == {"result": [], "score": 0.0, "model_version": results[0]["model_version"]}


def test_extra_params_in_every_form(client: Any, predictor: RecordingPredictor) -> None:
    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    versions = set()
    for extra in (
        None,
        "",
        "null",
        {},
        json.dumps({"question": "Is this message spam ?"}),
        {"max_text_chars": 50},
    ):
        reply = client.post("/setup", json=setup | {"extra_params": extra})
        assert reply.status_code == 200, (extra, reply.get_json())
        versions.add(reply.get_json()["model_version"])
    # a question makes the model SIM-OOT (calibrated on the most similar tasks): a version of its own; the text
    # length does not change the LLMs, prompt settings or classes
    assert len(versions) == 2
    assert sum(v.startswith("oot-sim-") for v in versions) == 1
    client.post("/setup", json=setup | {"extra_params": {"question": "Is this message spam ?"}})
    check_results(client.post("/predict", json=predict_body(["win a free prize now"])), [1], BINARY)
    assert predictor.projects[-1].question == "Is this message spam ?"
    assert predictor.projects[-1].question_source == "config"
    changed = client.post("/setup", json=setup | {"extra_params": {"prompt": {"system": "you label texts"}}})
    assert changed.get_json()["model_version"] not in versions  # prompt settings do change the version
    for bad, message in (
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"colour": "red"}, "unknown key"),
        ({"max_text_chars": -3}, "max_text_chars must be an integer >= 1, got -3"),
        ({"llms": [42]}, "llms"),
    ):
        reply = client.post("/setup", json=setup | {"extra_params": bad})
        assert reply.status_code == 400 and message in reply.get_json()["error"], (bad, reply.get_json())


def test_question_defaults_to_the_project_description(
    config: dict[str, Any], predictor: RecordingPredictor
) -> None:
    asked: list[int] = []

    def fetch(access: LabelStudioAccess, project: int, timeout: float) -> str:
        asked.append(project)
        return "Is this message spam ?"

    descriptions = ProjectDescriptions(LabelStudioAccess("http://label-studio:8080", "k" * 40), fetch=fetch)
    client = make_app(config, predictor, descriptions=descriptions).test_client()
    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    assert client.post("/setup", json=setup).status_code == 200
    check_results(client.post("/predict", json=predict_body(["see you at lunch"])), [1], BINARY)
    assert asked == [1]
    assert (predictor.projects[-1].question, predictor.projects[-1].question_source) == (
        "Is this message spam ?",
        "label_studio",
    )


def test_label_studio_down_falls_back_to_a_default_question(
    config: dict[str, Any], predictor: RecordingPredictor
):
    def fetch(access: LabelStudioAccess, project: int, timeout: float) -> str:
        raise ConnectionError("Label Studio is down")

    descriptions = ProjectDescriptions(LabelStudioAccess("http://127.0.0.1:9", "k" * 40), fetch=fetch)
    client = make_app(config, predictor, descriptions=descriptions).test_client()
    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    assert client.post("/setup", json=setup).status_code == 200
    check_results(client.post("/predict", json=predict_body(["see you at lunch"])), [1], BINARY)
    assert predictor.projects[-1].question_source == "default"
    # a webhook payload carries the description: it is used from then on
    webhook = next(c for c in load_captures() if c["path"] == "/webhook")["body"]
    webhook = copy.deepcopy(webhook)
    webhook["project"]["description"] = "<p>Is this message <b>spam</b> ?</p>"
    assert client.post("/webhook", json=webhook).status_code == 200
    check_results(client.post("/predict", json=predict_body(["see you at lunch"])), [1], BINARY)
    assert predictor.projects[-1].question == "Is this message spam ?"


# ---------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2, 3]", b"\xff\xfe", b'"text"'])
def test_malformed_bodies_get_400_and_the_server_keeps_serving(client: Any, path: str, raw: bytes) -> None:
    reply = client.post(path, data=raw, content_type="application/json")
    assert reply.status_code == 400
    assert reply.get_json()["status"] == 400 and reply.get_json()["error"]
    assert client.get("/health").status_code == 200


def test_missing_fields_are_named(client: Any) -> None:
    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    for key in ("schema", "project"):
        reply = client.post("/setup", json={k: v for k, v in setup.items() if k != key})
        assert reply.status_code == 400 and repr(key) in reply.get_json()["error"]
    assert (
        "'tasks'"
        in client.post("/predict", json={"project": "1.2", "label_config": BINARY}).get_json()["error"]
    )
    reply = client.post("/predict", json={"tasks": {"id": 1}, "project": "1.2", "label_config": BINARY})
    assert reply.status_code == 400 and "list" in reply.get_json()["error"]
    reply = client.post("/predict", json=predict_body(["x"], project="not-a-project"))
    assert reply.status_code == 400 and "<id>.<created_at>" in reply.get_json()["error"]
    reply = client.post("/predict", json={"tasks": [], "project": "77.1"})
    assert reply.status_code == 400 and "label_config" in reply.get_json()["error"]
    assert client.post("/webhook", json={"project": {}}).status_code == 400
    assert client.get("/nowhere").get_json()["status"] == 404
    assert client.get("/predict").status_code == 405


def test_a_config_without_choices_is_refused_at_setup_and_predict(client: Any) -> None:
    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    two_pairs = BINARY.replace(
        "</View>", MULTICLASS.split("<View>")[1].replace('name="text"', 'name="text2"')
    )
    for schema, message in (
        (NO_CHOICES, "no <Choices>"),
        (two_pairs, "2 <Choices>/<Text> pairs"),
        ("<View", "parse"),
    ):
        reply = client.post("/setup", json=setup | {"schema": schema})
        assert reply.status_code == 400 and message in reply.get_json()["error"], reply.get_json()
        reply = client.post("/predict", json=predict_body(["hello"], label_config=schema))
        assert reply.status_code == 400 and message in reply.get_json()["error"]
    assert client.get("/health").status_code == 200


def test_unreadable_tasks_get_an_empty_prediction_and_the_rest_are_answered(client: Any) -> None:
    body = predict_body(["win a free prize now", "", "   ", 42, None, "see you at lunch"])
    body["tasks"].append({"id": 99, "data": {"message": "wrong field"}})
    body["tasks"].append({"id": 100})
    body["tasks"].append("not a task")
    results = check_results(client.post("/predict", json=body), body["tasks"], BINARY)
    answered = [i for i, r in enumerate(results) if r["result"]]
    assert answered == [0, 5]
    for i in (1, 2, 3, 4, 6, 7, 8):
        assert results[i]["result"] == [] and results[i]["score"] == 0.0


def test_a_thousand_tasks_in_order(client: Any) -> None:
    texts = [
        "win a free prize now",
        "see you at lunch",
        "the match ended in a draw",
        "shares fell today",
        "hi",
    ]
    alone = [check_results(client.post("/predict", json=predict_body([t])), [t], BINARY)[0] for t in texts]
    # a random-weight model answers alike: its scores (distinct per text) show the order
    assert len({round(a["score"], 6) for a in alone}) == len(texts)
    many = [texts[(i * 7) % len(texts)] + " " * (i % 3) for i in range(1000)]
    started = time.perf_counter()
    results = check_results(client.post("/predict", json=predict_body(many)), many, BINARY)
    assert time.perf_counter() - started < 60
    expected = [alone[(i * 7) % len(texts)] for i in range(1000)]
    assert choices_of(results) == choices_of(expected)
    assert [r["score"] for r in results] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_too_many_tasks_get_413(config: dict[str, Any], predictor: RecordingPredictor) -> None:
    client = make_app(config | {"max_tasks": 5}, predictor).test_client()
    reply = client.post("/predict", json=predict_body(["hello"] * 6))
    assert reply.status_code == 413 and "max_tasks" in reply.get_json()["error"]
    check_results(client.post("/predict", json=predict_body(["hello"] * 5)), [0] * 5, BINARY)


def test_concurrent_predicts_give_the_answers_of_sequential_ones(client: Any) -> None:
    bodies = [
        predict_body([f"text {i} win a free prize", "see you at lunch", f"call now {i}"]) for i in range(8)
    ]
    expected = [client.post("/predict", json=b).get_json() for b in bodies]
    replies: list[Any] = [None] * len(bodies)

    def ask(i: int) -> None:
        replies[i] = client.post("/predict", json=bodies[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    health = client.get("/health")  # answered while the predictions run
    for t in threads:
        t.join(60)
    assert health.status_code == 200
    for reply, want, body in zip(replies, expected, bodies, strict=True):
        check_results(reply, body["tasks"], BINARY)
        assert reply.get_json() == want


# ---------------------------------------------------------------------------------------------------------------
# a predictor that fails or misbehaves


class FlakyPredictor(CascadePredictor):
    """The real predictor, failing on texts that contain 'boom' (as a model failing on some inputs would)."""

    def predict(self, project: ProjectSetup, texts: list[str]) -> list[Prediction]:
        if any("boom" in t for t in texts):
            raise ValueError("cannot read a boom")
        return super().predict(project, texts)


class WrongChoicePredictor(CascadePredictor):
    def predict(self, project: ProjectSetup, texts: list[str]) -> list[Prediction]:
        real = super().predict(project, texts)
        return [Prediction("maybe", 0.9, p.model_version, p.llms_asked, p.cost) for p in real]


def test_a_task_the_model_fails_on_gets_no_prediction_the_others_do(config: dict[str, Any]) -> None:
    client = make_app(config, FlakyPredictor()).test_client()
    body = predict_body(["see you at lunch", "boom", "win a free prize now"])
    results = check_results(client.post("/predict", json=body), body["tasks"], BINARY)
    assert results[1] == [] and results[0]["result"] and results[2]["result"]
    reply = client.post("/predict", json=predict_body(["boom", "boom again", "boom boom"]))  # a broken model
    assert reply.status_code == 500 and "cannot read a boom" in reply.get_json()["error"]
    assert client.post("/predict", json=predict_body(["boom"])).status_code == 500
    check_results(client.post("/predict", json=predict_body(["hello"])), [1], BINARY)  # still serving


def test_a_choice_outside_the_config_is_never_sent(config: dict[str, Any]) -> None:
    client = make_app(config, WrongChoicePredictor()).test_client()
    results = check_results(client.post("/predict", json=predict_body(["hello", "hi"])), [1, 2], BINARY)
    assert results == [[], []]


# ---------------------------------------------------------------------------------------------------------------
# auth, metrics, versions


def test_basic_auth_and_webhook_secret(config: dict[str, Any], predictor: RecordingPredictor) -> None:
    import base64

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    client = make_app(config, predictor, auth=("ls", "s3cret"), webhook_secret="hook").test_client()
    assert client.get("/health").status_code == 200  # health stays open for probes
    assert client.post("/setup", json=setup).status_code == 401
    assert "WWW-Authenticate" in client.post("/setup", json=setup).headers
    assert client.post("/setup", json=setup, headers=basic("ls", "wrong")).status_code == 401
    assert client.post("/setup", json=setup, headers=basic("ls", "s3cret")).status_code == 200
    assert client.get("/metrics").status_code == 401
    event = {"action": "START_TRAINING", "project": {"id": 1}}
    assert client.post("/webhook", json=event).status_code == 401
    assert client.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook"}).status_code == 200
    assert client.post("/webhook", json=event, headers=basic("ls", "s3cret")).status_code == 200

    open_auth = make_app(config, predictor, webhook_secret="hook").test_client()
    assert open_auth.post("/webhook", json=event).status_code == 401
    assert open_auth.post("/webhook", json=event, headers={"X-Webhook-Secret": "nope"}).status_code == 401
    assert open_auth.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook"}).status_code == 200


def test_basic_auth_from_the_environment(
    config: dict[str, Any], predictor: RecordingPredictor, monkeypatch
) -> None:
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    with pytest.raises(ValueError, match="BASIC_AUTH_PASS"):
        create_app(config, predictor)
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw")
    assert create_app(config, predictor).test_client().get("/versions").status_code == 401


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample, read by prometheus_client's parser (which refuses what is not the text format), keyed
    ``name{label="value",...}`` with the labels in alphabetical order."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def test_metrics_count_requests_llm_calls_and_confidence_bands(
    config: dict[str, Any], tmp_path: Path
) -> None:
    client = make_app(config | {"model_dir": str(tmp_path)}, CascadePredictor()).test_client()
    body = predict_body(["win a free prize now", "", "see you at lunch"])
    results = check_results(client.post("/predict", json=body), body["tasks"], BINARY)
    client.post("/predict", data=b"{", content_type="application/json")
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.content_type.startswith("text/plain; version=0.0.4")
    values = parse_metrics(reply.get_data(as_text=True))
    assert values['lwc_http_requests_total{endpoint="/predict",status="200"}'] == 1
    assert values['lwc_http_requests_total{endpoint="/predict",status="400"}'] == 1
    assert values['lwc_http_request_duration_seconds_count{endpoint="/predict"}'] == 2
    # the cheapest LLM scores every text; the second only those the policy sends deeper
    deeper = values.get('lwc_cascade_depth_total{depth="2"}', 0)
    assert values.get('lwc_cascade_depth_total{depth="1"}', 0) + deeper == 2
    assert values['lwc_llm_calls_total{llm="tiny-a"}'] == 2
    assert values.get('lwc_llm_calls_total{llm="tiny-b"}', 0) == deeper
    assert values['lwc_llm_cost_total{llm="tiny-a"}'] > 0  # seconds, by default
    assert values['lwc_predictions_total{band="none"}'] == 1
    bands = {k: v for k, v in values.items() if k.startswith("lwc_predictions_total") and "none" not in k}
    assert sum(bands.values()) == 2
    for result in (results[0], results[2]):
        score = result["score"]
        assert any(_in_band(score, key) for key in bands), (score, bands)
    # the same texts again: answered from the score cache, no LLM call
    assert check_results(client.post("/predict", json=body), body["tasks"], BINARY) == results
    again = parse_metrics(client.get("/metrics").get_data(as_text=True))
    assert again['lwc_llm_calls_total{llm="tiny-a"}'] == 2
    assert again['lwc_llm_cache_hits_total{llm="tiny-a"}'] == 2
    assert again.get('lwc_llm_cache_hits_total{llm="tiny-b"}', 0) == deeper


def _in_band(score: float, key: str) -> bool:
    lo, hi = (float(x) for x in re.search(r"\[([\d.]+),([\d.]+)", key).groups())  # type: ignore[union-attr]
    return lo <= score <= hi


def test_versions_per_project(config: dict[str, Any], predictor: Any, tmp_path: Path) -> None:
    # a fresh model dir: /versions also lists the versions the learning loop keeps there
    client = make_app(config | {"model_dir": str(tmp_path)}, predictor).test_client()
    setup = next(c for c in load_captures() if c["path"] == "/setup")["body"]
    assert client.get("/versions").get_json() == {"versions": []}
    version = client.post("/setup", json=setup).get_json()["model_version"]
    other = client.post("/setup", json=setup | {"project": "2.1795875051", "schema": MULTICLASS}).get_json()
    assert client.get("/versions", json={"project": setup["project"]}).get_json() == {"versions": [version]}
    assert client.get("/versions").get_json() == {"versions": sorted({version, other["model_version"]})}


def test_warm_up_loads_the_model_in_the_background(config: dict[str, Any]) -> None:
    client = make_app(config, CascadePredictor()).test_client()
    assert client.get("/health").get_json()["model"] == "lazy"
    app = make_app(config, CascadePredictor(), warm_up=True)
    assert app.extensions["lwc"].model_ready.wait(30)
    assert app.test_client().get("/health").get_json()["model"] == "ready"
    broken = make_app(
        {"llms": [{"name": "gone", "kind": "hf", "model": "/nonexistent/model"}]},
        CascadePredictor(),
        warm_up=True,
    )
    assert broken.extensions["lwc"].model_ready.wait(30)
    health = broken.test_client().get("/health").get_json()
    assert health["status"] == "UP" and health["model"].startswith("failed:")
    reply = broken.test_client().post("/predict", json=predict_body(["hello"]))
    assert reply.status_code == 500 and reply.get_json()["error"].startswith("the model failed")


def test_explain_says_which_llms_answered_each_task(client: Any) -> None:
    body = predict_body(["win a free prize now", "", "see you at lunch"])
    results = check_results(client.post("/predict", json=body), body["tasks"], BINARY)
    explained = client.get("/explain?project=1").get_json()
    assert explained["project"] == 1
    by_task = {d["task"]: d for d in explained["predictions"]}
    assert 2 not in by_task  # the empty text was not predicted
    for task_id, result in ((1, results[0]), (3, results[2])):
        detail = by_task[task_id]
        assert detail["choice"] == result["result"][0]["value"]["choices"][0]
        assert detail["score"] == result["score"] and detail["model_version"] == result["model_version"]
        assert detail["llms_asked"] in (["tiny-a"], ["tiny-a", "tiny-b"])
        assert (
            len(detail["answers"])
            == len(detail["scores"])
            == len(detail["llm_costs"])
            == len(detail["llms_asked"])
        )
        assert detail["cost"] == pytest.approx(sum(detail["llm_costs"]))
    assert [d["task"] for d in client.get("/explain?project=1&task=3").get_json()["predictions"]] == [3]
    assert client.get("/explain?project=1&task=99").get_json()["predictions"] == []
    assert client.get("/explain").status_code == 400
    assert client.get("/explain?project=abc").status_code == 400
