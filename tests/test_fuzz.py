"""Fuzzing as a habit: generated JSON thrown at every endpoint of the real app, and generated webhook streams
thrown concurrently at the label store (hypothesis).

- Every endpoint, for any body, answers below 500 (a clear 4xx, or 200), and the server keeps serving: /health,
  /metrics and a valid /setup + /predict still answer 200 afterwards.
- A stream of webhooks (valid ones for a few annotations: creates, updates with their own timestamps, deletes,
  cancelled ones, labels outside the classes; mixed with malformed ones) delivered from many threads at once (so
  that they are group-committed together) leaves the store exactly as a serial replay of the valid events alone
  does, and records every malformed one as ``ignored`` with a ``malformed`` reason.

Both run in well under a minute each here (``max_examples`` is set for CI, see the settings below).
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ls_backend.labelstudio import LabelStudioAccess
from ls_backend.loop import LabelStore
from ls_backend.server import CascadePredictor, create_app
from ls_backend.server.config import PROJECT_SETTINGS
from ls_backend.server.projects import ProjectDescriptions

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
MULTICLASS = (REPO_ROOT / "label_config" / "multiclass.xml").read_text()
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# ---------------------------------------------------------------------------------------------------------------
# generated JSON

# text of every kind, lone surrogates included (they reach the server as "\ud800" escapes)
texts = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(
    ["", " ", "yes", "no", "²"]
)
numbers = (
    st.integers(-5, 5)
    | st.sampled_from([2**63 - 1, 2**63, 10**30, -(2**63)])
    | st.floats(allow_nan=True, allow_infinity=True)
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# valid values are drawn more often than junk (a branch repeated weighs more), so that requests get past the
# first check and reach the code behind it
valid_projects = st.sampled_from(["1.1795875050", "2.1795875050", "3", 3, "1"])
project_ids = st.one_of(
    valid_projects,
    valid_projects,
    valid_projects,
    st.sampled_from(["99999999999999999999999.1", "².1", "1.²", "0.1", "-1.1", "1.1.1", " 2 ", "x"]),
    json_values,
)
task_ids = st.one_of(st.integers(1, 40), st.integers(1, 40), json_values)
label_configs = st.one_of(
    st.just(BINARY), st.just(BINARY), st.sampled_from([MULTICLASS, "<View/>", "<View", "no xml"]), json_values
)
setting_values = st.one_of(
    st.booleans(),
    st.integers(0, 30),
    st.floats(0, 1),
    st.just(["tiny-a"]),
    st.sampled_from(["ST", "none"]),
    json_values,
)


def settings_paths() -> st.SearchStrategy[dict[str, Any]]:
    """extra_params built from real setting names (so the rules are reached) with any values."""
    paths = [*PROJECT_SETTINGS, "model_dir", "limits.max_projects", "loop.poll_s", "llms"]
    return st.dictionaries(st.sampled_from(paths), setting_values, max_size=3).map(_nest)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        section, _, key = path.rpartition(".")
        if section and not isinstance(nested.get(section), dict):
            nested[section] = {}
        (nested[section] if section else nested)[key] = value
    return nested


extra_params = st.one_of(
    st.none(), settings_paths(), settings_paths(), settings_paths().map(json.dumps), json_values
)
tasks = st.fixed_dictionaries(
    {"id": task_ids, "data": st.fixed_dictionaries({"text": texts | texts | json_values})}
)
choices = st.sampled_from(["yes", "no", "maybe"]) | json_values


def annotation(annotation_id: Any, task_id: Any, choice: Any) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "task": task_id,
        "project": 1,
        "result": [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
        ],
        "was_cancelled": False,
        "created_at": "2026-11-28T10:00:00Z",
        "updated_at": "2026-11-28T10:00:00Z",
        "completed_by": 1,
    }


bodies = {
    "/setup": st.fixed_dictionaries(
        {"project": project_ids, "schema": label_configs},
        optional={"extra_params": extra_params, "hostname": texts, "access_token": texts},
    ),
    "/predict": st.fixed_dictionaries(
        {"tasks": st.lists(tasks | tasks | json_values, max_size=4) | json_values, "project": project_ids},
        optional={"label_config": label_configs, "params": json_values},
    ),
    "/webhook": st.fixed_dictionaries(
        {
            "action": st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"])
            | json_values,
            "project": st.fixed_dictionaries({"id": project_ids}) | json_values,
        },
        optional={
            "annotation": st.builds(annotation, task_ids, task_ids, choices) | json_values,
            "annotations": st.lists(st.fixed_dictionaries({"id": task_ids}), max_size=3) | json_values,
            "task": tasks | json_values,
        },
    ),
    "/jobs/prelabel": st.fixed_dictionaries(
        {"project": project_ids}, optional={"mode": st.sampled_from(["missing", "all"]) | json_values}
    ),
    "/jobs/1/cancel": json_values,
    "/calibration-sample": st.fixed_dictionaries(
        {"project": project_ids},
        optional={
            "k": st.integers(-2, 30) | json_values,
            "method": st.sampled_from(["U", "SE", "IE"]) | json_values,
            "seed": st.integers(0, 9) | json_values,
        },
    ),
}


def encoded(value: Any) -> st.SearchStrategy[bytes]:
    return st.just(json.dumps(value).encode())


requests = st.one_of(
    *[
        st.tuples(
            st.just(path),
            st.one_of(
                body.flatmap(encoded),
                body.flatmap(encoded),
                st.binary(max_size=40),
                json_values.flatmap(encoded),
            ),
        )
        for path, body in bodies.items()
    ]
)
queries = st.tuples(
    st.sampled_from(["/status", "/explain", "/versions", "/metrics", "/health", "/jobs", "/jobs/1"]),
    st.fixed_dictionaries(
        {}, optional={"project": valid_projects.map(str) | texts, "task": task_ids.map(str)}
    ),
    json_values.flatmap(encoded) | st.just(b""),
)


# ---------------------------------------------------------------------------------------------------------------
# every endpoint


@pytest.fixture(scope="module")
def fuzzed_app(tiny_llm_dir: Path, oot_table: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = {
        "llms": [{"name": "tiny-a", "kind": "hf", "model": str(tiny_llm_dir), "batch_size": 32}],
        "model_dir": str(tmp_path_factory.mktemp("fuzz-models")),
        "oot_scores": str(oot_table),
        "cascade": {"similar_tasks": False},
        "loop": {"retrain_every": 0, "poll_s": 0.2, "idle_stop_s": 1.0, "views": False},
        "limits": {"max_json_depth": 20},
    }
    app = create_app(
        config, CascadePredictor(), auth=None, webhook_secret=None, descriptions=ProjectDescriptions(None)
    )
    # pre-annotation jobs get a Label Studio that refuses every connection (port 9 on loopback): they start,
    # pause and retry in the background, and every /jobs call is answered meanwhile
    app.extensions["lwc"].learning.access = LabelStudioAccess("http://127.0.0.1:9", "key")
    return app


@settings(FUZZ, max_examples=500)
@given(st.lists(requests | queries, min_size=1, max_size=4))
@example(calls=[("/status", {"project": "\ud800"}, b"")])  # a lone surrogate in a query (found by this test)
def test_fuzzed_json_at_every_endpoint_never_gives_5xx(fuzzed_app: Any, calls: list[tuple]) -> None:
    client = fuzzed_app.test_client()
    for call in calls:
        if len(call) == 2:
            path, raw = call
            reply = client.post(path, data=raw, content_type="application/json")
        else:
            path, query, raw = call
            # percent-encoded here, lone surrogates as the invalid UTF-8 bytes a client could send (the test
            # client's own encoding refuses them: a failure of the test, not of the server)
            query_string = urllib.parse.urlencode(query, encoding="utf-8", errors="surrogatepass")
            reply = client.get(path, query_string=query_string, data=raw, content_type="application/json")
        assert reply.status_code < 500, (path, reply.get_data(as_text=True)[:500])
        assert reply.is_json or path == "/metrics", (path, reply.get_data(as_text=True)[:200])
    assert client.get("/health").status_code == 200


def test_the_fuzzed_server_still_serves(fuzzed_app: Any) -> None:
    """Run after the fuzz test (same app): it answers a real project as before."""
    client = fuzzed_app.test_client()
    key = "4.1795875050"
    setup = {"project": key, "schema": BINARY, "hostname": "", "access_token": "", "extra_params": None}
    assert client.post("/setup", json=setup).status_code == 200
    tasks = [{"id": 1, "data": {"text": "win a free prize now"}}, {"id": 2, "data": {"text": "see you"}}]
    reply = client.post("/predict", json={"tasks": tasks, "project": key, "label_config": BINARY})
    assert reply.status_code == 200 and all(r["result"] for r in reply.get_json()["results"])
    assert client.get("/metrics").status_code == 200 and client.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# webhook streams at the store

CLASSES = ("yes", "no")
PARSED_CONFIG = {
    "label": {
        "type": "Choices",
        "to_name": ["text"],
        "inputs": [{"type": "Text", "valueType": None, "value": "text"}],
        "labels": list(CLASSES),
        "labels_attrs": {c: {"value": c} for c in CLASSES},
    }
}


def webhook(action: str, annotation_id: int, second: int, kind: str) -> dict[str, Any]:
    """A valid webhook of annotation ``annotation_id`` (task ``100 + id``). Its content is a function of (id,
    second, kind), so two versions with the same ``updated_at`` are the same and the final state does not depend on
    the order of delivery."""
    if action == "ANNOTATIONS_DELETED":
        return {"action": action, "project": {"id": 1}, "annotations": [{"id": annotation_id}]}
    choice = {"yes": "yes", "no": "no", "outside": "maybe"}.get(kind, "yes")
    body = annotation(annotation_id, 100 + annotation_id, choice)
    second = second + 10 * {"yes": 0, "no": 1, "outside": 2, "cancelled": 3}[kind]  # one content per stamp
    body["updated_at"] = f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}Z"
    body["was_cancelled"] = kind == "cancelled"
    task = {"id": 100 + annotation_id, "data": {"text": f"text of task {100 + annotation_id}"}}
    project = {"id": 1, "parsed_label_config": PARSED_CONFIG}
    return {"action": action, "project": project, "annotation": body, "task": task}


valid_events = st.builds(
    webhook,
    st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]),
    st.integers(1, 6),
    st.integers(0, 9),
    st.sampled_from(["yes", "no", "outside", "cancelled"]),
)


def corrupt(event: dict[str, Any], how: str) -> Any:
    """A malformed copy of a valid event (the store must ignore it and say why)."""
    event = json.loads(json.dumps(event))
    annotation = event.get("annotation")
    if how == "not json":
        return b'{"action": "ANNOTATION_CREATED", '
    if how == "deep":
        return '{"action": "ANNOTATION_CREATED", "annotation": ' + "[" * 5000 + "]" * 5000 + "}"
    if how == "list":
        return [event]
    if annotation is None:  # a delete
        event["annotations"] = [{"id": {"10**30": 10**30, "id ²": "²"}.get(how, -1)}]
        return event
    if how == "10**30":
        annotation["id"] = 10**30
    elif how == "id ²":
        annotation["task"] = "²"
    elif how == "completed_by":
        annotation["completed_by"] = 2**64
    elif how == "timestamp":
        annotation["updated_at"] = "2026-13-45T99:00:00Z"
    else:
        annotation["result"], annotation["was_cancelled"] = "not a list", False
    return event


malformed_events = st.builds(
    corrupt,
    valid_events,
    st.sampled_from(["not json", "deep", "list", "10**30", "id ²", "completed_by", "timestamp", "result"]),
)
streams = st.lists(st.tuples(st.booleans(), valid_events, malformed_events), min_size=1, max_size=40)


def state(store: LabelStore) -> dict[str, Any]:
    """What the store holds for project 1, beyond the order events came in (change sequence numbers)."""
    with sqlite3.connect(store.path) as db:
        live = db.execute(
            "SELECT annotation_id, task_id, label, ignored_reason, updated_at_us, created_at_us, completed_by "
            "FROM annotations WHERE project = 1 AND deleted = 0 ORDER BY annotation_id"
        ).fetchall()
        deleted = db.execute(
            "SELECT annotation_id FROM annotations WHERE project = 1 AND deleted = 1 ORDER BY 1"
        ).fetchall()
        texts = db.execute("SELECT task_id, text FROM tasks WHERE project = 1 ORDER BY 1").fetchall()
    labels = store.labels(1)
    return {
        "live": live,
        "deleted": deleted,
        "texts": texts,
        "labels": list(zip(labels.task_ids.tolist(), labels.labels.tolist(), strict=True)),
    }


@FUZZ
@given(streams)
def test_a_concurrent_webhook_stream_is_stored_as_its_valid_events_replayed_serially(stream: list) -> None:
    events = [valid if keep else bad for keep, valid, bad in stream]
    valid = [valid for keep, valid, _ in stream if keep]
    with tempfile.TemporaryDirectory() as folder:
        concurrent_store = LabelStore(Path(folder) / "concurrent.db", synchronous="NORMAL")
        serial_store = LabelStore(Path(folder) / "serial.db", synchronous="NORMAL")
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(concurrent_store.record_event, events))
        for event in valid:
            serial_store.record_event(event)
        for (keep, _, _), outcome in zip(stream, outcomes, strict=True):
            if keep:
                assert outcome.outcome in ("applied", "duplicate", "ignored") and not str(
                    outcome.reason or ""
                ).startswith("malformed"), outcome
            else:
                assert outcome.outcome == "ignored" and outcome.reason.startswith("malformed"), outcome
        assert state(concurrent_store) == state(serial_store)
        concurrent_store.close()
        serial_store.close()
