"""Pre-annotation jobs without a Label Studio: the pure plan, the durable job store (real SQLite, two stores on
one file as two processes would have), the priority lock, and the job runner's failure handling.

The runner tests use :class:`MemoryLabelStudio`, an in-memory stand-in for the five calls a job makes, because
they need Label Studio to fail in ways a real one cannot be made to fail on cue: a create request whose
predictions are stored but whose reply is lost, a request refused for one task of a batch, minutes of outage.
The same runner against a real Label Studio 1.23.2 is tests/test_prelabel_e2e.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from ls_backend.labelstudio import ListedTask, is_transient, parse_label_config
from ls_backend.loop.jobs import JobConflict, JobStore, plan_tasks
from ls_backend.server.jobs import Backoff, JobContext, StoredJobState, run_job
from ls_backend.server.predictor import Prediction, PriorityLock

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_CONFIG_XML = (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text()
LABEL = parse_label_config(LABEL_CONFIG_XML)


# ---- the plan


def test_missing_mode_predicts_tasks_without_a_prediction_of_the_target_version() -> None:
    tasks = [
        ListedTask(1, "a", {10: "v1"}),
        ListedTask(2, "b", {11: "v2"}),
        ListedTask(3, "c", {}),
        ListedTask(4, None, {}),
    ]
    plan = plan_tasks(tasks, "v2", "missing")
    assert plan.to_predict == [1, 3] and plan.done == [2] and plan.unreadable == [4]
    assert plan.replaces == {} and plan.stale == []


def test_all_mode_replaces_the_target_versions_predictions_and_survives_a_restart() -> None:
    tasks = [ListedTask(1, "a", {10: "v2", 12: "v1"}), ListedTask(2, "b", {})]
    first = plan_tasks(tasks, "v2", "all")
    assert first.to_predict == [1, 2] and first.replaces == {1: [10], 2: []}
    # a restart after task 1's new prediction (20) was created but before 10 was deleted: 1 is done, 10 stale
    again = plan_tasks(
        [ListedTask(1, "a", {10: "v2", 12: "v1", 20: "v2"}), ListedTask(2, "b", {})],
        "v2",
        "all",
        first.replaces,
    )
    assert again.to_predict == [2] and again.done == [1] and again.stale == [10]
    with pytest.raises(ValueError, match="mode"):
        plan_tasks(tasks, "v2", "everything")


# ---- the store


def test_one_active_job_per_project_across_processes(tmp_path: Path) -> None:
    one, other = JobStore(tmp_path / "labels.db"), JobStore(tmp_path / "labels.db")
    job = one.create(3, "prelabel", "missing", trigger="test")
    with pytest.raises(JobConflict) as conflict:
        other.create(3)
    assert conflict.value.job.id == job.id
    assert other.create(4).project == 4  # another project is free
    one.update(job.id, status="done")
    assert other.create(3).id != job.id  # a finished job frees the project


def test_a_plan_and_batches_are_counted_and_a_replan_keeps_what_was_done(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "labels.db")
    job = store.create(1)
    tasks = [ListedTask(t, f"text {t}") for t in range(1, 6)] + [ListedTask(6, "x", {60: "v"})]
    store.set_plan(job.id, "v", plan_tasks(tasks, "v", "missing"))
    job = store.record_batch(job.id, [1, 2], failed=[3], llm_calls=4, cached=1)
    assert (job.total, job.done, job.skipped, job.failed, job.llm_calls, job.cached) == (6, 2, 1, 1, 4, 1)
    # after a restart Label Studio lists 1 and 2 as done: they stay this job's work, not skipped ones; so does
    # 4, created in Label Studio by a process killed before it could record the batch
    listed = [ListedTask(t, f"text {t}", {100 + t: "v"} if t in (1, 2, 4, 6) else {}) for t in range(1, 7)]
    job = store.set_plan(job.id, "v", plan_tasks(listed, "v", "missing"))
    assert (job.done, job.skipped) == (3, 1)
    assert store.task_states(job.id) == {
        1: "done",
        2: "done",
        3: "pending",
        4: "done",
        5: "pending",
        6: "skipped",
    }
    cancelled = store.request_cancel(store.create(2).id)
    assert cancelled.status == "cancelled"  # a queued job stops at once
    assert store.jobs(active_only=True)[0].id == job.id


def test_a_label_store_of_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "labels.db"
    old = sqlite3.connect(path)  # the jobs table as the first version of the job store made it
    old.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, project INTEGER NOT NULL, kind TEXT NOT NULL, "
        "mode TEXT NOT NULL, trigger TEXT, backend TEXT NOT NULL DEFAULT 'embedded', status TEXT NOT NULL, "
        "target_version TEXT, total INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, "
        "skipped INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, "
        "llm_calls INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0, "
        "deleted INTEGER NOT NULL DEFAULT 0, llm_seconds REAL NOT NULL DEFAULT 0, "
        "label_studio_seconds REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, "
        "retargets INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, note TEXT, "
        "error TEXT, external_id TEXT, created_at REAL NOT NULL, started_at REAL, updated_at REAL NOT NULL, "
        "finished_at REAL)"
    )
    old.execute(
        "INSERT INTO jobs (project, kind, mode, status, done, created_at, updated_at) "
        "VALUES (7, 'prelabel', 'missing', 'done', 3, 0, 0)"
    )
    old.commit()
    old.close()
    store = JobStore(path)
    (job,) = store.jobs(7)
    assert (job.done, job.llm_cost) == (3, 0.0)  # the earlier job is kept, with the new counter at 0
    assert store.record_batch(store.create(8).id, [1], [], llm_cost=1.5).llm_cost == 1.5


# ---- the priority lock


def test_an_interactive_caller_gets_an_llm_before_a_waiting_background_one() -> None:
    lock = PriorityLock()
    order: list[str] = []
    holder = threading.Event()

    def background(name: str) -> None:
        with lock.hold(background=True):
            order.append(name)
            holder.wait(0.05)

    with lock.hold(background=True):  # a job's batch is running
        waiting = threading.Thread(target=background, args=("job",))
        waiting.start()
        time.sleep(0.05)  # the job waits for its next batch

        def request() -> None:
            with lock.hold():
                order.append("request")

        interactive = threading.Thread(target=request)
        interactive.start()
        time.sleep(0.05)
    waiting.join(2)
    interactive.join(2)
    assert order == ["request", "job"]


# ---- the runner


class LostReply(httpx.ReadTimeout):
    """The request reached Label Studio, which stored the predictions; the answer never came back."""


class Refused(Exception):
    status_code = 400


class MemoryLabelStudio:
    """An in-memory stand-in for a project's five calls (see the module docstring), with failures on cue."""

    def __init__(self, n_tasks: int, empty: Sequence[int] = ()) -> None:
        self.texts = {t: ("" if t in empty else f"message {t}") for t in range(1, n_tasks + 1)}
        self.predictions: dict[int, tuple[int, str]] = {}  # id -> (task, version)
        self.next_id = 1000
        self.failures: list[BaseException] = []  # raised (first first) by the next create calls
        self.down_for = 0  # the next calls of any kind fail with a connection error
        self.refuse_tasks: set[int] = set()
        self.creates = 0

    def _call(self) -> None:
        if self.down_for > 0:
            self.down_for -= 1
            raise httpx.ConnectError("connection refused")

    def list_tasks(self, data_key: str) -> list[ListedTask]:
        self._call()
        return [
            ListedTask(t, text or None, {p: v for p, (task, v) in self.predictions.items() if task == t})
            for t, text in self.texts.items()
        ]

    def _store(self, item: dict[str, Any]) -> None:
        self.next_id += 1
        self.predictions[self.next_id] = (int(item["task"]), str(item["model_version"]))

    def create_predictions(self, items: Sequence[dict[str, Any]]) -> int:
        self._call()
        self.creates += 1
        if any(i["task"] in self.refuse_tasks for i in items):
            raise Refused("invalid task")
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None and not isinstance(failure, LostReply):
            raise failure
        for item in items:
            self._store(dict(item))
        if failure is not None:
            raise failure
        return len(items)

    def create_prediction(self, item: dict[str, Any]) -> None:
        self._call()
        if item["task"] in self.refuse_tasks:
            raise Refused("invalid task")
        self._store(item)

    def predictions_of(self, task_ids: Sequence[int], version: str) -> dict[int, list[int]]:
        self._call()
        found: dict[int, list[int]] = {}
        for p, (task, v) in self.predictions.items():
            if task in task_ids and v == version:
                found.setdefault(task, []).append(p)
        return found

    def delete_prediction(self, prediction_id: int) -> bool:
        self._call()
        return self.predictions.pop(prediction_id, None) is not None

    def per_task(self, version: str) -> dict[int, int]:
        counts = {t: 0 for t in self.texts}
        for task, v in self.predictions.values():
            counts[task] += v == version
        return counts


class Model:
    """The predictions of a model of a given version (what the cascade would answer; the cascade itself runs in
    the end-to-end tests); counts the texts it was asked about."""

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.asked = 0
        self.on_batch: Any = None

    def predict(self, texts: list[str]) -> list[Prediction]:
        self.asked += len(texts)
        if self.on_batch is not None:
            self.on_batch()
        return [
            Prediction("yes", 0.75, self.version, ["llm"], cost=0.25, llm_costs=(0.25,), llm_called=(True,))
            for _ in texts
        ]


def context(store: JobStore, job_id: int, ls: MemoryLabelStudio, model: Model, **kwargs: Any) -> JobContext:
    return JobContext(
        state=StoredJobState(store, job_id),
        label_studio=ls,  # type: ignore[arg-type]
        label=LABEL,
        predict=model.predict,
        version=lambda: model.version,
        batch_size=kwargs.pop("batch_size", 4),
        backoff=Backoff(0.01, 0.02),
        **kwargs,
    )


def test_a_job_predicts_every_readable_task_once(tmp_path: Path) -> None:
    store, ls, model = JobStore(tmp_path / "labels.db"), MemoryLabelStudio(10, empty=[7]), Model()
    ls._store({"task": 2, "model_version": "v1"})  # task 2 was predicted by this version before
    ls._store({"task": 3, "model_version": "v0"})  # task 3 only by an older one
    routed: list[int] = []
    booked: list[tuple[int, str | None]] = []
    job = store.create(1)
    done = run_job(
        context(
            store, job.id, ls, model, after_batch=lambda ids, *rest: routed.extend(ids),
            on_predicted=lambda ids, ps: booked.extend((t, p.model_version) for t, p in zip(ids, ps, strict=True)),
        )
    )  # fmt: skip
    assert done.status == "done" and (done.total, done.done, done.skipped, done.failed) == (10, 8, 2, 0)
    assert ls.per_task("v1") == {t: 0 if t == 7 else 1 for t in range(1, 11)}
    assert ls.creates == 2 and model.asked == 8 and done.llm_calls == 8
    assert done.llm_cost == pytest.approx(8 * 0.25)  # what the fresh LLM calls cost
    assert sorted(routed) == [1, 2, 3, 4, 5, 6, 8, 9, 10]  # task 2 with the score it holds
    assert sorted(booked) == [(t, "v1") for t in (1, 3, 4, 5, 6, 8, 9, 10)]  # what the model was asked, once


def test_a_lost_reply_is_not_sent_twice(tmp_path: Path) -> None:
    store, ls, model = JobStore(tmp_path / "labels.db"), MemoryLabelStudio(8), Model()
    ls.failures = [LostReply("read timed out")]
    job = run_job(context(store, store.create(1).id, ls, model))
    assert job.status == "done" and job.done == 8
    assert ls.per_task("v1") == {t: 1 for t in range(1, 9)}


def test_label_studio_down_pauses_the_job_until_it_answers(tmp_path: Path) -> None:
    store, ls, model = JobStore(tmp_path / "labels.db"), MemoryLabelStudio(8), Model()
    seen: list[str] = []

    def down_after_first_batch() -> None:
        if model.asked == 8 and not seen:  # the second batch: Label Studio goes away for 6 calls
            ls.down_for = 6
            seen.append("down")

    model.on_batch = down_after_first_batch
    job = store.create(1)
    update = store.update

    # every state the job passes through, not a sample
    def recording_update(job_id: int, **values: Any) -> Any:
        if values.get("status") == "paused":
            seen.append(str(values.get("note")))
        return update(job_id, **values)

    store.update = recording_update  # type: ignore[method-assign]
    done = run_job(context(store, job.id, ls, model))
    assert done.status == "done" and done.done == 8 and ls.per_task("v1") == {t: 1 for t in range(1, 9)}
    assert any("paused: creating 4 predictions failed (ConnectError" in note for note in seen[1:])


def test_a_refused_task_costs_the_batch_nothing(tmp_path: Path) -> None:
    store, ls, model = JobStore(tmp_path / "labels.db"), MemoryLabelStudio(6), Model()
    ls.refuse_tasks = {2}
    job = run_job(context(store, store.create(1).id, ls, model))
    assert job.status == "done" and (job.done, job.failed) == (5, 1)
    assert ls.per_task("v1") == {1: 1, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}
    assert store.task_states(job.id)[2] == "failed"


def test_a_stopped_job_resumes_without_duplicates_and_a_cancelled_one_ends(tmp_path: Path) -> None:
    store, ls, model = JobStore(tmp_path / "labels.db"), MemoryLabelStudio(12), Model()
    stopping = threading.Event()
    model.on_batch = lambda: stopping.set() if model.asked >= 8 else None
    job = store.create(1)
    first = run_job(context(store, job.id, ls, model, stopping=stopping))
    assert first.status == "paused" and 0 < first.done < 12
    model.on_batch = None
    second = run_job(context(store, job.id, ls, model))  # the next start
    assert second.status == "done" and second.done == 12 and second.attempts == 2
    assert ls.per_task("v1") == {t: 1 for t in range(1, 13)}
    assert model.asked == 12  # the batch in hand when the stop came was created first: nothing asked twice

    other = store.create(1)
    model.on_batch = lambda: store.request_cancel(other.id)
    cancelled = run_job(context(store, other.id, MemoryLabelStudio(12), model))
    assert cancelled.status == "cancelled" and cancelled.done == 4


def test_a_promotion_during_a_job_retargets_it_and_all_mode_replaces(tmp_path: Path) -> None:
    store, ls, model = JobStore(tmp_path / "labels.db"), MemoryLabelStudio(10), Model("v1")
    model.on_batch = lambda: setattr(model, "version", "v2") if model.asked >= 8 else None
    job = run_job(context(store, store.create(1).id, ls, model))
    assert job.status == "done" and job.target_version == "v2" and job.retargets == 1
    assert ls.per_task("v2") == {t: 1 for t in range(1, 11)}
    model.on_batch = None
    again = run_job(context(store, store.create(1, mode="all").id, ls, model))
    assert again.done == 10 and again.deleted == 10
    assert ls.per_task("v2") == {t: 1 for t in range(1, 11)}


def test_transient_errors() -> None:
    assert is_transient(httpx.ConnectError("refused")) and is_transient(TimeoutError())
    assert not is_transient(Refused()) and not is_transient(ValueError("bug"))


# ---- the endpoints refuse what they cannot do, with a reason


def test_job_endpoints_refuse_bad_requests(
    tmp_path: Path, tiny_llm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ls_backend.server import create_app
    from ls_backend.server.projects import ProjectDescriptions

    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = {
        "llms": [{"name": "tiny-a", "kind": "hf", "model": str(tiny_llm_dir)}],
        "model_dir": str(tmp_path / "models"),
        "oot_scores": str(tmp_path / "no-scores.jsonl.gz"),
        "cascade": {"similar_tasks": False},
    }
    app = create_app(config, auth=None, webhook_secret=None, descriptions=ProjectDescriptions(None))
    client = app.test_client()
    unknown = client.post("/jobs/prelabel", json={"project": 5})
    assert unknown.status_code == 404 and "no /setup yet" in unknown.get_json()["error"]
    setup = client.post("/setup", json={"project": "5.1795875050", "schema": LABEL_CONFIG_XML})
    assert setup.status_code == 200
    bad_mode = client.post("/jobs/prelabel", json={"project": 5, "mode": "everything"})
    assert bad_mode.status_code == 400 and "'mode' must be one of" in bad_mode.get_json()["error"]
    assert client.post("/jobs/prelabel", data="{not json").status_code == 400
    assert client.post("/jobs/prelabel", json={"project": "x"}).status_code == 400
    no_access = client.post("/jobs/prelabel", json={"project": 5})
    assert no_access.status_code == 503 and "LABEL_STUDIO_URL" in no_access.get_json()["error"]
    for response in (client.get("/jobs/12345"), client.post("/jobs/12345/cancel"), client.get("/jobs/abc")):
        assert response.status_code == 404 and response.get_json()["status"] == 404
    assert client.get("/jobs?project=5").get_json() == {"jobs": []}  # nothing was created for the refusals
    assert client.get("/status?project=5").get_json()["job"] is None
