"""POST /webhook, answered in front of Flask (ls_backend.server.webhooks): the same authentication, errors,
limits, metrics and in-flight bookkeeping as every other endpoint, on the real app with its learning loop.

The app's LLM is never loaded: a webhook does not predict (the config names a tiny model that is not there)."""

from __future__ import annotations

import base64
import io
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from ls_backend.server import CascadePredictor, create_app
from ls_backend.server.projects import ProjectDescriptions
from ls_backend.server.webhooks import WebhookEndpoint, has_basic_auth
from tests.prometheus_text import metric_value

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()


def make_app(tmp_path: Path, **kwargs: Any) -> Any:
    config = {
        "llms": [{"name": "tiny-a", "kind": "hf", "model": str(tmp_path / "no-model-here")}],
        "model_dir": str(tmp_path / "models"),
        "oot_scores": str(tmp_path / "no-oot-scores.jsonl.gz"),
        "cascade": {"similar_tasks": False},
        "loop": {"poll_s": 0.05, "idle_stop_s": None, "views": False, "uncertainty_sampling": False},
    }
    kwargs.setdefault("auth", None)
    kwargs.setdefault("webhook_secret", None)
    return create_app(config, CascadePredictor(), descriptions=ProjectDescriptions(None), **kwargs)


def annotation(annotation_id: int, choice: str = "yes") -> dict[str, Any]:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 3, "label_config": BINARY},
        "task": {"id": 10 + annotation_id, "data": {"text": f"text {annotation_id}"}},
        "annotation": {
            "id": annotation_id,
            "task": 10 + annotation_id,
            "result": [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
            ],
            "updated_at": "2026-11-28T14:00:00.000000Z",
            "created_at": "2026-11-28T14:00:00.000000Z",
            "completed_by": 1,
        },
    }


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_webhook_is_stored_and_answered_with_its_outcome(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    client = app.test_client()
    reply = client.post("/webhook", json=annotation(1))
    assert reply.status_code == 200 and reply.content_type == "application/json"
    assert reply.get_json() == {"status": "ok", "action": "ANNOTATION_CREATED", "outcome": "applied"}
    again = client.post("/webhook", json=annotation(1))
    assert again.get_json()["outcome"] == "duplicate"
    assert len(app.extensions["lwc"].learning.store.labels(3)) == 1


def test_errors_are_json_with_their_status(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    cases = {
        b"": (400, "empty"),
        b"not json": (400, "stored as ignored"),
        b"[1, 2]": (400, "stored as ignored"),
        b'{"project": {"id": 3}}': (400, "missing 'action'"),
        b'{"action": 5}': (400, "'action' must be a string"),
    }
    for body, (status, _) in cases.items():
        reply = client.post("/webhook", data=body, content_type="application/json")
        assert reply.status_code == status, body
        assert set(reply.get_json()) == {"error", "status"} and reply.get_json()["status"] == status
    # every other method is Flask's: 405, JSON as well
    assert client.get("/webhook").status_code == 405
    assert client.get("/webhook").get_json()["status"] == 405


def test_basic_auth_and_the_webhook_secret(tmp_path: Path) -> None:
    event = annotation(1)
    locked = make_app(tmp_path / "a", auth=("ls", "s3cret"), webhook_secret="hook").test_client()
    refused = locked.post("/webhook", json=event, headers={"Authorization": "Basic !!!not-base64"})
    assert refused.status_code == 401 and "basic auth" in refused.get_json()["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert locked.post("/webhook", json=event, headers=basic("ls", "wrong")).status_code == 401
    assert locked.post("/webhook", json=event, headers=basic("ls", "s3cret")).status_code == 200
    assert (
        locked.post("/webhook", json=annotation(2), headers={"X-Webhook-Secret": "hook"}).status_code == 200
    )
    secret_only = make_app(tmp_path / "b", webhook_secret="hook").test_client()
    assert secret_only.post("/webhook", json=event).status_code == 401
    assert secret_only.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook"}).status_code == 200


def test_has_basic_auth_reads_only_well_formed_headers() -> None:
    expected = ("user", "pa:ss")
    good = basic("user", "pa:ss")["Authorization"]
    assert has_basic_auth(good, expected)
    assert has_basic_auth(good.replace("Basic", "basic"), expected)
    for header in (
        None,
        "",
        "Basic",
        "Bearer x",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        good + "=",
    ):
        assert not has_basic_auth(header, expected), header


def test_body_limits_and_chunked_bodies(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    state = app.extensions["lwc"]
    endpoint = WebhookEndpoint(state, app.wsgi_app.app, max_body_bytes=2000)
    body = __import__("json").dumps(annotation(1)).encode()
    answers: list[str] = []

    def call(environ_extra: dict[str, Any], data: bytes) -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/webhook", "wsgi.input": io.BytesIO(data),
            "wsgi.errors": sys.stderr, **environ_extra,
        }  # fmt: skip
        out = b"".join(endpoint(environ, lambda status, headers: answers.append(status)))
        return answers[-1], out

    assert call({"CONTENT_LENGTH": str(len(body))}, body)[0] == "200 OK"
    assert call({"CONTENT_LENGTH": "2001"}, b"x" * 2001)[0].startswith("413")
    assert call({"CONTENT_LENGTH": "12x"}, body)[0].startswith("400")
    # a chunked request: no Content-Length, the server says the stream ends
    chunked = __import__("json").dumps(annotation(2)).encode()
    assert call({"wsgi.input_terminated": True}, chunked)[0] == "200 OK"
    assert call({"wsgi.input_terminated": True}, b" " * 2001)[0].startswith("413")
    assert len(state.learning.store.labels(3)) == 2


def test_metrics_and_in_flight(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    state = app.extensions["lwc"]
    seen: list[bool] = []
    record = state.learning.record_webhook

    def recording(payload: Any) -> Any:
        seen.append(state.busy())  # a retrain's tuning process pauses while a webhook is answered
        return record(payload)

    state.learning.record_webhook = recording
    client = app.test_client()
    client.post("/webhook", json=annotation(1))
    client.post("/webhook", data=b"{", content_type="application/json")
    assert seen == [True, True] and not state.busy()
    text = client.get("/metrics").get_data(as_text=True)
    assert metric_value(text, "lwc_http_requests_total", endpoint="/webhook", status="200") == 1
    assert metric_value(text, "lwc_http_requests_total", endpoint="/webhook", status="400") == 1
    assert metric_value(text, "lwc_http_request_duration_seconds_count", endpoint="/webhook") == 2


def test_a_failing_store_answers_500_and_the_server_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path)
    store = app.extensions["lwc"].learning.store
    record = store.record_event
    store.record_event = lambda payload, origin="webhook": (_ for _ in ()).throw(
        sqlite3.OperationalError("disk I/O error")
    )
    client = app.test_client()
    reply = client.post("/webhook", json=annotation(1))
    assert reply.status_code == 500 and "disk I/O error" in reply.get_json()["error"]
    assert "POST /webhook failed" in caplog.text
    store.record_event = record
    assert client.post("/webhook", json=annotation(1)).get_json()["outcome"] == "applied"
    assert client.get("/health").status_code == 200
