"""Regression tests of the hardening issue (#12): each test reproduces one defect found by probing ``lwc serve``
as an attacker and as a careless client would, and is named after it.

The server is the real Flask app with the real CascadePredictor over one tiny random-weight LLM (``tiny-a`` of
conftest.py), the real label store and version store; Label Studio is not needed (no access configured).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ls_backend.loop import LabelStore, ServingModel, VersionStore
from ls_backend.loop.simulation import synthetic_project
from ls_backend.server import CascadePredictor, create_app
from ls_backend.server.projects import ProjectDescriptions

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
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


def make_app(config: dict[str, Any], predictor: CascadePredictor) -> Any:
    app = create_app(
        config, CascadePredictor(), auth=None, webhook_secret=None, descriptions=ProjectDescriptions(None)
    )
    app.extensions["lwc"].predictor._slots = predictor._slots  # share the loaded tiny model
    return app


def setup_body(project: str, extra: Any = None) -> dict[str, Any]:
    return {"project": project, "schema": BINARY, "hostname": "", "access_token": "", "extra_params": extra}


def predict_body(project: str, texts: list[str], first_id: int = 1) -> dict[str, Any]:
    tasks = [{"id": first_id + i, "data": {"text": t}} for i, t in enumerate(texts)]
    return {"tasks": tasks, "project": project, "label_config": BINARY}


def project_folders(config: dict[str, Any]) -> list[str]:
    return sorted(p.name for p in Path(config["model_dir"]).glob("project-*"))


def wait_until(condition: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def annotation_webhook(project: int, annotation_id: int, task_id: int, choice: str, **fields: Any) -> dict:
    """An ANNOTATION_CREATED webhook with the task's text, as Label Studio 1.23.2 sends it."""
    annotation = {
        "id": annotation_id,
        "task": task_id,
        "project": project,
        "result": [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
        ],
        "was_cancelled": False,
        "created_at": "2026-11-28T10:00:00Z",
        "updated_at": "2026-11-28T10:00:00Z",
        "completed_by": 1,
        **fields,
    }
    task = {"id": task_id, "data": {"text": f"message {task_id} see you at lunch"}}
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project},
        "annotation": annotation,
        "task": task,
    }


# ---------------------------------------------------------------------------------------------------------------
# 1. a project's extra_params could name LLM endpoints, credentials and local paths


class _Listener(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, *args: Any) -> None:
        pass


def test_extra_params_cannot_send_the_servers_secrets_or_texts_anywhere(
    config: dict[str, Any], predictor: CascadePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "the-webhook-secret")
    _Listener.received = []
    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    port = listener.server_address[1]
    client = make_app(config, predictor).test_client()
    try:
        attacks = [
            {"llms": [{"name": "x", "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
                       "api_key_env": "WEBHOOK_SECRET"}]},
            {"llms": [{"name": "x", "kind": "hf", "model": str(REPO_ROOT)}]},
            {"llms": ["tiny-a", {"name": "x", "kind": "packaged", "model": "gemma3-270m"}]},
            {"model_dir": "/etc"},
            {"oot_scores": "/etc/passwd"},
            {"limits": {"max_projects": 10**9}},
            {"loop": {"poll_s": 0.000001}},
            {"loop": {"tuning_process": False}},
            {"max_tasks": 10**9},
            {"cascade": {"batch_size": 10**9}},
        ]  # fmt: skip
        for i, extra in enumerate(attacks):
            reply = client.post("/setup", json=setup_body(f"{i + 1}.1795875050", extra))
            assert reply.status_code == 400, (extra, reply.get_json())
            assert "extra_params" in reply.get_json()["error"]
            results = client.post("/predict", json=predict_body(f"{i + 1}.1795875050", ["win a free prize"]))
            assert results.status_code == 200
        assert _Listener.received == []  # no request, so neither the secret nor a task text left the server
        # a project chooses among the LLMs the server offers, by name
        chosen = client.post("/setup", json=setup_body("20.1795875050", {"llms": ["tiny-a"]}))
        plain = client.post("/setup", json=setup_body("21.1795875050"))
        assert chosen.status_code == plain.status_code == 200
        assert chosen.get_json()["model_version"] == plain.get_json()["model_version"]
        unknown = client.post("/setup", json=setup_body("22.1795875050", {"llms": ["gpt-x"]}))
        assert unknown.status_code == 400 and "tiny-a" in unknown.get_json()["error"]
        # and tunes what is the project's to tune, within the server's limits
        tuned = {"loop": {"review_threshold": 0.6}, "cascade": {"threshold": 0.9}, "max_tasks": 10}
        assert client.post("/setup", json=setup_body("23.1795875050", tuned)).status_code == 200
    finally:
        listener.shutdown()
        listener.server_close()


# ---------------------------------------------------------------------------------------------------------------
# 2. one malformed webhook in a group-committed batch rolled back the batch


def test_one_malformed_webhook_in_a_batch_costs_the_others_nothing(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.db")
    project = synthetic_project(200, seed=1)
    bad_events = [
        project.annotation_payload(0, 9_001) | {"annotation": {**project.annotation_payload(0, 9_001)["annotation"],
                                                                "completed_by": 10**30}},
        project.annotation_payload(1, 9_002) | {"annotation": {**project.annotation_payload(1, 9_002)["annotation"],
                                                                "id": "²"}},
        project.annotation_payload(150, 9_003) | {"task": {"id": 151, "data": {"text": "lone \ud800 surrogate"}}},
        project.annotation_payload(3, 10**30),
        {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": 2**63}]},
        {"action": "ANNOTATION_CREATED", "project": {"id": 10**30}, "annotation": {}},
    ]  # fmt: skip
    outcomes: dict[int, Any] = {}
    errors: list[BaseException] = []

    def deliver(i: int, payload: Any) -> None:
        try:
            outcomes[i] = store.record_event(payload)
        except BaseException as error:
            errors.append(error)

    for round_ in range(3):
        valid = [project.annotation_payload(p, 1 + p) for p in range(round_ * 40, round_ * 40 + 40)]
        events = valid + bad_events
        outcomes.clear()
        threads = [threading.Thread(target=deliver, args=(i, e)) for i, e in enumerate(events)]
        with store._write_lock:  # every event queues behind the lock: they are stored as one batch
            for thread in threads:
                thread.start()
            n_events = len(events)
            wait_until(lambda: len(store._pending) == n_events)  # noqa: B023 - waited for in this iteration
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert [outcomes[i].outcome for i in range(40)] == ["applied"] * 40
        for i in range(40, len(events)):
            assert outcomes[i].outcome in ("ignored", "applied", "duplicate"), outcomes[i]
    assert len(store.labels(1)) == 120 + 1  # the event with a lone surrogate in its text keeps its label
    labeled = store.labels(1)
    assert labeled.texts[labeled.task_ids.tolist().index(151)] == "lone \ufffd surrogate"
    ignored = [e for e in store.events(limit=1000) if e["outcome"] == "ignored"]
    assert len(ignored) == 3 * (len(bad_events) - 1)
    reasons = " ".join(e["reason"] for e in ignored)
    assert "completed_by" in reasons and "annotation.id" in reasons and "64-bit" in reasons


# ---------------------------------------------------------------------------------------------------------------
# 3. a /predict with a project id that overflows registered the project, and /metrics failed for good


@pytest.mark.parametrize("bad", ["99999999999999999999999.1", "².1", "1.²", "-3.1", "0.1", str(2**63)])
def test_a_predict_with_an_overflowing_project_id_registers_nothing(
    config: dict[str, Any], predictor: CascadePredictor, bad: str
) -> None:
    app = make_app(config, predictor)
    client = app.test_client()
    reply = client.post("/predict", json=predict_body(bad, ["win a free prize"]))
    assert reply.status_code == 400 and "project" in reply.get_json()["error"]
    assert client.post("/setup", json=setup_body(bad)).status_code == 400
    assert client.get(f"/status?project={bad}").status_code == 400
    assert app.extensions["lwc"].learning.project_numbers() == []
    assert project_folders(config) == []
    assert client.get("/metrics").status_code == 200
    restarted = make_app(config, predictor).test_client()  # nothing was written that a restart could restore
    assert restarted.get("/metrics").status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# 4. every new project id made a worker thread and a folder; stored texts and events had no limit


def test_unauthenticated_calls_cannot_grow_threads_folders_or_stored_copies(
    config: dict[str, Any], predictor: CascadePredictor
) -> None:
    config["limits"] = {"max_projects": 3, "max_stored_text_chars": 1000, "max_stored_event_bytes": 4000}
    config["loop"] |= {"idle_stop_s": 0.5}
    app = make_app(config, predictor)
    client = app.test_client()
    learning = app.extensions["lwc"].learning
    baseline = threading.active_count()
    for i in range(50):  # new project ids with nothing to predict register nothing
        reply = client.post("/predict", json={"tasks": [], "project": f"{100 + i}.1", "label_config": BINARY})
        assert reply.status_code == 200 and reply.get_json() == {"results": []}
    assert threading.active_count() <= baseline and project_folders(config) == []
    for i in range(3):
        assert client.post("/setup", json=setup_body(f"{i + 1}.1795875050")).status_code == 200
    for refused in (
        client.post("/setup", json=setup_body("4.1795875050")),
        client.post("/predict", json=predict_body("5.1795875050", ["see you at lunch"])),
    ):
        assert refused.status_code == 503 and "max_projects" in refused.get_json()["error"]
    assert project_folders(config) == ["project-1", "project-2", "project-3"]
    assert learning.project_numbers() == [1, 2, 3]
    assert client.post("/setup", json=setup_body("1.1795875050")).status_code == 200  # known: still served

    # idle workers stop, and start again when there is work
    def workers_alive() -> list[int]:
        return [n for n in learning.project_numbers() if learning.get(n).worker.alive]

    wait_until(lambda: workers_alive() == [], timeout=20)
    assert threading.active_count() <= baseline
    long_text = "win a free prize now " * 300  # 6300 characters
    results = client.post("/predict", json=predict_body("1.1795875050", [long_text], first_id=7)).get_json()
    assert results["results"][0]["result"]
    for i in range(8):
        client.post("/webhook", json=annotation_webhook(1, 100 + i, 10 + i, "yes" if i % 2 else "no"))
    big = annotation_webhook(1, 200, 7, "yes")
    big["task"] = {"id": 7, "data": {"text": long_text}}
    raw = json.dumps(big).encode()
    reply = client.post("/webhook", data=raw, content_type="application/json")
    assert reply.get_json()["outcome"] == "applied"
    store: LabelStore = learning.store
    stored = store.task_record(1, 7)
    assert stored is not None and len(stored["text"]) == 1000 and stored["truncated"]
    assert stored["text"] == long_text[:1000] and stored["chars"] == len(long_text)
    assert stored["sha256"] == hashlib.sha256(long_text.encode()).hexdigest()
    (event,) = store.events(1, limit=1, payloads=True)
    assert event["payload_truncated"] and len(event["payload"].encode()) <= 4000
    assert event["payload_bytes"] == len(raw) and event["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    for i in range(8):
        client.post("/webhook", json=annotation_webhook(1, 300 + i, 30 + i, "yes" if i % 2 else "no"))
    reply = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert reply.get_json()["outcome"] == "retrain"
    versions = VersionStore(config["model_dir"], 1)
    wait_until(lambda: versions.serving().status == "promoted", timeout=60)
    (result,) = wait_until(lambda: learning.get(1).worker.results)  # the worker started again for it
    assert result.status == "promoted"
    wait_until(lambda: workers_alive() == [], timeout=20)


# ---------------------------------------------------------------------------------------------------------------
# 5. a version file of valid JSON with a wrong-typed field took the project down


@pytest.mark.parametrize(
    "field, value",
    [
        ("metrics", "x"),
        ("evaluation", [1, 2]),
        ("labels", {"watermark": "x"}),
        ("config", 3),
        ("parent", {"a": 1}),
        ("model.policy", None),
        ("model.calibrators", "x"),
        ("model", []),
        ("created_at", None),
    ],
)
def test_a_version_file_with_a_wrong_typed_field_falls_back_to_the_previous_version(
    config: dict[str, Any], predictor: CascadePredictor, field: str, value: Any
) -> None:
    app = make_app(config, predictor)
    client = app.test_client()
    key = "1.1795875050"
    oot = client.post("/setup", json=setup_body(key)).get_json()["model_version"]
    assert client.post("/predict", json=predict_body(key, ["see you at lunch"])).status_code == 200
    learning = app.extensions["lwc"].learning
    assert learning.wait_idle()
    versions = VersionStore(config["model_dir"], 1)
    initial = versions.serving()
    promoted = versions.save(initial.model, status="promoted", parent=initial.name, trigger="test")
    versions.promote(promoted.name)
    path = versions.path_of(promoted.name)
    data = json.loads(path.read_text())
    target, _, leaf = field.rpartition(".")
    (data[target] if target else data)[leaf] = value
    path.write_text(json.dumps(data))
    assert versions.serving().name == initial.name and promoted.name in (versions.last_fallback or "")
    for reply in (
        client.post("/setup", json=setup_body(key)),
        client.post("/predict", json=predict_body(key, ["see you at lunch"])),
        client.get("/status?project=1"),
        client.get("/versions", json={"project": key}),
        client.get("/metrics"),
    ):
        assert reply.status_code == 200, reply.get_data(as_text=True)
    assert client.post("/setup", json=setup_body(key)).get_json()["model_version"] == oot
    listed = {v["name"]: v["status"] for v in versions.list()}
    assert listed[promoted.name] == "invalid"


# ---------------------------------------------------------------------------------------------------------------
# 6. deeply nested JSON gave 500; a lone surrogate in one task's text dropped the whole batch from the store


def test_deep_json_gets_400_and_a_lone_surrogate_costs_only_its_task(
    config: dict[str, Any], predictor: CascadePredictor
) -> None:
    app = make_app(config, predictor)
    client = app.test_client()
    deep = "[" * 10_000 + "]" * 10_000
    bodies = {
        "/setup": '{"project": "1.1", "schema": "<View/>", "extra_params": ' + deep + "}",
        "/predict": '{"project": "1.1", "tasks": ' + deep + "}",
        "/webhook": '{"action": "ANNOTATION_CREATED", "annotation": ' + deep + "}",
        "/calibration-sample": '{"project": 1, "k": ' + deep + "}",
    }
    for path, raw in bodies.items():
        reply = client.post(path, data=raw, content_type="application/json")
        assert reply.status_code == 400 and "nested" in reply.get_json()["error"], (path, reply.get_json())
    reply = client.get("/versions", data=deep, content_type="application/json")
    assert reply.status_code == 400
    extra = json.dumps({"prompt": {"system": json.loads("[" * 500 + "]" * 500)}})
    reply = client.post("/setup", json=setup_body("1.1795875050", extra))
    assert reply.status_code == 400 and "nested" in reply.get_json()["error"]
    store: LabelStore = app.extensions["lwc"].learning.store
    (event,) = [e for e in store.events() if e["action"] is None and e["outcome"] == "ignored"]
    assert "nested" in event["reason"]
    assert store.record_event(deep).outcome == "ignored"
    nested: dict[str, Any] = {}
    for _ in range(5000):
        nested = {"a": nested}
    assert store.record_event({"action": "PROJECT_UPDATED", "project": nested}).outcome == "ignored"
    assert client.get("/health").status_code == 200

    key = "1.1795875050"
    assert client.post("/setup", json=setup_body(key)).status_code == 200
    raw = json.dumps(predict_body(key, ["win a free prize", "lone \ud800 surrogate", "see you at lunch"]))
    reply = client.post("/predict", data=raw, content_type="application/json")
    assert reply.status_code == 200
    results = reply.get_json()["results"]
    assert results[0]["result"] and results[2]["result"]
    assert results[1]["result"] == [] and results[1]["score"] == 0.0  # nothing it can read, said once
    assert sorted(store.texts(1)) == [1, 3] and sorted(store.predicted_scores(1)) == [1, 3]


# ---------------------------------------------------------------------------------------------------------------
# 7. the retrain's bin-edge tuning ran in the request threads' process, holding its GIL for seconds


def test_retrain_tuning_runs_outside_the_request_process_with_the_same_result(tmp_path: Path) -> None:
    from ls_backend.ensemble.tuning import tune_bin_edges
    from ls_backend.loop import LoopConfig, retrain
    from ls_backend.loop.tuning import tune_in_subprocess

    rng = np.random.default_rng(0)
    answers = rng.integers(0, 2, size=(2, 300))
    scores = rng.uniform(0.5, 1.0, size=(2, 300))
    labels = np.where(rng.uniform(size=300) < scores[0], answers[0], 1 - answers[0])
    costs = np.stack([np.full(300, 1.0), np.full(300, 3.0)])
    kwargs = {"costs": costs, "n_bins": 4, "n_trials": 12, "n_splits": 2, "seed": 3, "n_classes": 2}
    here = tune_bin_edges(answers, scores, labels, **kwargs)
    there = tune_in_subprocess(answers, scores, labels, **kwargs)
    assert there.pid != os.getpid()
    assert there.n_trials == here.n_trials and there.best_value == here.best_value
    for a, b in zip(there.edges, here.edges, strict=True):
        np.testing.assert_array_equal(a, b)

    # the server's worker tunes in a separate process (and says so in the version it saves)
    project = synthetic_project(400, seed=4)
    store = LabelStore(tmp_path / "labels.db")
    versions = VersionStore(tmp_path / "models", 1)
    versions.ensure_initial(ServingModel.out_of_task(project.llms, project.classes))
    for position in range(400):
        store.record_event(project.annotation_payload(position, position + 1))
    config = LoopConfig(n_trials=10, n_splits=2, tuning_timeout_s=None, min_tuning_labels=100)
    result = retrain(1, store, versions, project.score_fn, config, tune=tune_in_subprocess)
    assert result.status in ("promoted", "rejected"), result.reason
    tuning = versions.load(result.version or "").metrics["tuning"]
    assert tuning["process"] == "separate" and tuning["pid"] != os.getpid() and tuning["n_trials"] == 10


def _tuning_child() -> int | None:
    """The pid of this process's ``python -m ls_backend.loop.tuning`` child, if one runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"ls_backend.loop.tuning" in cmdline:
            return int(stat.parent.name)
    return None


def _state_and_cpu(pid: int) -> tuple[str, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[11]) + int(fields[12])  # state, utime + stime (clock ticks)


def test_the_tuning_process_is_stopped_while_the_server_answers_requests() -> None:
    from ls_backend.loop.tuning import tune_in_subprocess

    rng = np.random.default_rng(1)
    answers = rng.integers(0, 2, size=(2, 400))
    scores = rng.uniform(0.5, 1.0, size=(2, 400))
    labels = answers[0]
    busy = threading.Event()
    busy.set()
    results: list[Any] = []
    kwargs = {"n_bins": 4, "n_trials": 100_000, "n_splits": 2, "n_classes": 2, "timeout": 2.0}
    tuning = threading.Thread(
        target=lambda: results.append(
            tune_in_subprocess(answers, scores, labels, pause_while=busy.is_set, **kwargs)
        )
    )
    tuning.start()
    pid = wait_until(_tuning_child, timeout=30)
    state, cpu = wait_until(lambda: (s := _state_and_cpu(pid))[0] == "T" and s, timeout=10)
    time.sleep(0.5)
    assert _state_and_cpu(pid) == (state, cpu)  # stopped: not one tick of CPU while "a request" is answered
    busy.clear()
    tuning.join(120)
    (result,) = results
    assert result.pid == pid and result.n_trials >= 1 and len(result.edges) == 2


PAUSED_TUNING_SERVER = """
import numpy as np
from ls_backend.loop.tuning import tune_in_subprocess
rng = np.random.default_rng(1)
answers, scores = rng.integers(0, 2, size=(2, 400)), rng.uniform(0.5, 1.0, size=(2, 400))
tune_in_subprocess(answers, scores, answers[0], pause_while=lambda: True, n_bins=4, n_trials=100_000,
                   n_splits=2, n_classes=2, timeout=None)
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _ended(pid: int) -> bool:
    try:
        return _state_and_cpu(pid)[0] in ("Z", "X")  # a zombie has ended (its new parent may not reap it)
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_a_paused_tuning_process_ends_with_a_killed_server() -> None:
    # a server killed while its tuning child is stopped left that child stopped for ever (found after a benchmark)
    server = subprocess.Popen([sys.executable, "-c", PAUSED_TUNING_SERVER])
    try:
        (child,) = wait_until(lambda: _children(server.pid), timeout=60)
        wait_until(lambda: _state_and_cpu(child)[0] == "T", timeout=30)
        server.kill()
        server.wait(10)
        wait_until(lambda: _ended(child), timeout=10)
    finally:
        if server.poll() is None:
            server.kill()


def test_a_server_that_is_never_idle_still_gets_its_tuning() -> None:
    from ls_backend.loop.tuning import tune_in_subprocess

    rng = np.random.default_rng(2)
    answers = rng.integers(0, 2, size=(2, 200))
    scores = rng.uniform(0.5, 1.0, size=(2, 200))
    started = time.monotonic()
    result = tune_in_subprocess(
        answers, scores, answers[0], pause_while=lambda: True,
        n_bins=3, n_trials=100_000, n_splits=2, n_classes=2, timeout=1.0,
    )  # fmt: skip
    assert result.n_trials >= 1 and time.monotonic() - started < 120  # the cap passed: it ran to its end


def test_the_tuning_process_imports_the_installed_package_and_says_when_it_is_another_copy() -> None:
    import ls_backend.loop.tuning as tuning

    env = tuning._child_env()
    assert env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")  # nothing of a checkout added to it
    tuning._same_package(str(Path(tuning.__file__).resolve()))  # the copy this server runs: accepted
    with pytest.raises(tuning.TuningProcessError, match="pip install"):
        tuning._same_package(str(Path("elsewhere") / "ls_backend" / "loop" / "tuning.py"))
