"""The label store: webhook idempotency on Label Studio's captured payloads, ignored records, label sources,
catch-up from the API, and band/weight/sampling helpers of the loop."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ls_backend.labelstudio import LabelStudioProject
from ls_backend.loop import (
    LabelStore,
    Thresholds,
    assign_bands,
    band_counts,
    calibration_weights,
    draw_calibration_sample,
)
from ls_backend.loop.catch_up import catch_up_from_label_studio
from ls_backend.loop.events import parse_timestamp_us
from ls_backend.loop.simulation import synthetic_project

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "ls-protocol" / "captures"  # beside the checkout


def capture(number: int) -> dict[str, Any]:
    path = next(CAPTURES.glob(f"{number:02d}_*.json"))
    return json.loads(path.read_text())["body"]


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore(tmp_path / "labels.db")


def test_captured_webhooks_create_update_train_delete(store: LabelStore) -> None:
    created, updated, train, deleted = capture(15), capture(16), capture(17), capture(18)
    outcome = store.record_event(created)
    assert (outcome.outcome, outcome.project, outcome.action) == ("applied", 1, "ANNOTATION_CREATED")
    assert store.labels(1).labels.tolist() == ["yes"]
    assert store.labels(1).texts == ["this is good"]
    assert store.record_event(updated).outcome == "applied"
    assert store.labels(1).labels.tolist() == ["no"]
    assert store.record_event(train).retrain_requested
    assert store.record_event(deleted).outcome == "applied"
    assert len(store.labels(1)) == 0
    assert store.annotation(1, 1)["deleted"] == 1
    assert store.project_config(1).classes == ("yes", "no")


def test_duplicate_deliveries_are_no_ops(store: LabelStore) -> None:
    created = capture(15)
    store.record_event(created)
    watermark = store.watermark(1)
    for _ in range(3):
        assert store.record_event(json.dumps(created).encode()).outcome == "duplicate"
    assert store.watermark(1) == watermark
    assert store.labels(1).labels.tolist() == ["yes"]
    assert store.counts(1)["events"]["webhook"] == 4  # every delivery is stored raw


def test_out_of_order_update_before_create_keeps_the_newest(store: LabelStore) -> None:
    store.record_event(capture(16))  # UPDATED (newer, "no") arrives first
    late = store.record_event(capture(15))  # CREATED (older, "yes")
    assert (late.outcome, late.reason) == ("ignored", "stale")
    assert store.labels(1).labels.tolist() == ["no"]


def test_delete_then_late_create_does_not_resurrect(store: LabelStore) -> None:
    store.record_event(capture(18))  # delete of an id never seen: a tombstone
    for number in (15, 16):
        outcome = store.record_event(capture(number))
        assert (outcome.outcome, outcome.reason) == ("ignored", "deleted")
    assert len(store.labels(1)) == 0
    assert store.record_event(capture(18)).outcome == "duplicate"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: a.update(was_cancelled=True), "was_cancelled"),
        (lambda a: a.update(result=[]), "no_choice"),
        (lambda a: a["result"][0]["value"].update(choices=["maybe"]), "label_outside_classes"),
        (lambda a: a["result"][0]["value"].update(choices=["yes", "no"]), "several_choices"),
    ],
)
def test_annotations_without_a_usable_label_are_kept_with_their_reason(
    store: LabelStore, change, reason
) -> None:
    store.record_event(capture(15))
    payload = copy.deepcopy(capture(16))
    change(payload["annotation"])
    outcome = store.record_event(payload)
    assert (outcome.outcome, outcome.reason) == ("applied", reason)
    assert len(store.labels(1)) == 0  # the usable "yes" of the older version is replaced
    assert store.counts(1)["annotations_without_label"] == {reason: 1}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        {"annotation": {"id": 1}},  # no action
        {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"task": 1}},  # no id
        {
            "action": "ANNOTATION_CREATED",
            "project": {"id": 1},
            "annotation": {"id": 1, "task": 1, "updated_at": "x"},
        },
        {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": []},
    ],
)
def test_malformed_payloads_are_stored_and_ignored_with_a_reason(store: LabelStore, payload) -> None:
    outcome = store.record_event(payload)
    assert outcome.outcome == "ignored"
    assert outcome.reason.startswith("malformed: ")
    stored = store.events(limit=1)[0]
    assert stored["outcome"] == "ignored" and stored["reason"] == outcome.reason


def test_unknown_actions_are_acknowledged(store: LabelStore) -> None:
    assert store.record_event({"action": "PROJECT_UPDATED", "project": {"id": 1}}).outcome == "acknowledged"


def test_label_sources_follow_the_requests(store: LabelStore) -> None:
    project = synthetic_project(20, seed=3)
    store.record_event(project.annotation_payload(0, 100))  # labeled before any request
    marked = store.mark_requests(1, [1, 2, 3], "calibration", "v0001", [0.5, 0.25, 1.0], "IE")
    assert marked == [2, 3]  # task 1 already had its label: not asked for
    assert store.mark_requests(1, [4, 2], "review", "v0001") == [4, 2]
    with pytest.raises(ValueError, match="inclusion probability"):
        store.mark_requests(1, [5], "calibration")
    for position, annotation_id in ((1, 101), (2, 102), (3, 103), (4, 104)):
        store.record_event(project.annotation_payload(position, annotation_id))
    labeled = store.labels(1)
    by_task = dict(zip(labeled.task_ids.tolist(), labeled.sources.tolist(), strict=True))
    assert by_task == {1: "annotator", 2: "calibration", 3: "calibration", 4: "review", 5: "annotator"}
    probabilities = dict(
        zip(labeled.task_ids.tolist(), labeled.inclusion_probabilities.tolist(), strict=True)
    )
    assert probabilities[2] == 0.25 and probabilities[3] == 1.0 and np.isnan(probabilities[4])


def test_one_label_per_task_the_latest_wins(store: LabelStore) -> None:
    project = synthetic_project(5, seed=0)
    store.record_event(project.annotation_payload(0, 1, choice="yes", seconds=1))
    store.record_event(project.annotation_payload(0, 2, choice="no", seconds=2))
    assert store.labels(1).labels.tolist() == ["no"]
    assert store.labels(1).annotation_ids.tolist() == [2]


def test_catch_up_applies_missed_labels_and_deletions(store: LabelStore) -> None:
    project = synthetic_project(10, seed=0)
    store.record_event(project.annotation_payload(0, 1, choice="yes", seconds=1))
    store.record_event(project.annotation_payload(1, 2, choice="yes", seconds=1))
    listing = [
        project.annotation_payload(0, 1, choice="no", seconds=5)["annotation"],  # updated while down
        project.annotation_payload(2, 3, choice="yes", seconds=5)["annotation"],  # created while down
        {"id": 9, "task": 3},  # malformed (no timestamp): skipped, counted
    ]  # annotation 2 was deleted while down
    result = store.catch_up(1, listing, texts={3: "task 3"})
    assert (result.created, result.updated, result.deleted, result.malformed) == (1, 1, 1, 1)
    labeled = store.labels(1)
    assert dict(zip(labeled.task_ids.tolist(), labeled.labels.tolist(), strict=True)) == {1: "no", 3: "yes"}
    again = store.catch_up(1, listing[:2])
    assert (again.created, again.updated, again.unchanged, again.deleted) == (0, 0, 2, 0)


class _FakeTasks:
    """A minimal stand-in for label_studio_sdk's ``client.tasks`` (the lead tests the real one)."""

    def __init__(self, tasks: list[dict[str, Any]] | Exception) -> None:
        self.tasks = tasks

    def list(self, **kwargs: Any) -> list[dict[str, Any]]:
        if isinstance(self.tasks, Exception):
            raise self.tasks
        assert kwargs["project"] == 1 and kwargs["fields"] == "all"
        return self.tasks


class _FakeClient:
    def __init__(self, tasks: list[dict[str, Any]] | Exception) -> None:
        self.tasks = _FakeTasks(tasks)


def test_catch_up_from_label_studio_through_a_client(store: LabelStore) -> None:
    store.record_event(capture(15))  # remembers the project's config (data key "text")
    annotation = dict(capture(16)["annotation"])
    del annotation["task"]  # the API nests annotations in their task
    tasks = [{"id": 1, "data": {"text": "this is good"}, "annotations": [annotation]}, {"id": 2, "data": {}}]
    fetched = LabelStudioProject(_FakeClient(tasks), 1).list_annotations("text")
    assert (
        fetched.n_tasks == 2 and fetched.annotations[0]["task"] == 1 and fetched.texts == {1: "this is good"}
    )
    result = catch_up_from_label_studio(store, LabelStudioProject(_FakeClient(tasks), 1))
    assert result is not None and result.updated == 1
    assert store.labels(1).labels.tolist() == ["no"]
    down = LabelStudioProject(_FakeClient(ConnectionError("refused")), 1)
    assert catch_up_from_label_studio(store, down) is None


def test_timestamps_order_microseconds() -> None:
    a = parse_timestamp_us("2026-11-28T14:12:32.014409Z")
    b = parse_timestamp_us("2026-11-28T14:12:32.014462Z")
    assert b - a == 53
    assert parse_timestamp_us("2026-11-28T15:12:32.014409+01:00") == a


# ---------------------------------------------------------------------------------------------- routing


def test_bands_and_counts() -> None:
    scores = np.array([0.1, 0.69, 0.7, 0.9, 0.95, 1.0, np.nan])
    bands = assign_bands(scores, Thresholds(review=0.7, auto_accept=0.95))
    assert bands.tolist() == [
        "review",
        "review",
        "trusted",
        "trusted",
        "auto_accept",
        "auto_accept",
        "review",
    ]
    assert band_counts(bands) == {"review": 3, "trusted": 2, "auto_accept": 2}
    assert band_counts(assign_bands([0.8, None], Thresholds(0.7))) == {
        "review": 1,
        "trusted": 1,
        "auto_accept": 0,
    }
    with pytest.raises(ValueError, match="auto-accept"):
        Thresholds(review=0.8, auto_accept=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        assign_bands([1.5], Thresholds())


@pytest.mark.parametrize("method", ["U", "SE", "IE"])
def test_calibration_draw_comes_with_inclusion_probabilities(method: str) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(100, 300)
    uncalibrated = rng.uniform(0.5, 1.0, 200)
    draw = draw_calibration_sample(ids, uncalibrated, uncalibrated * 0.8, 30, method, rng)
    assert draw.task_ids.size == 30 and np.unique(draw.task_ids).size == 30
    assert np.isin(draw.task_ids, ids).all()
    assert ((draw.inclusion_probabilities > 0) & (draw.inclusion_probabilities <= 1)).all()
    assert (
        draw_calibration_sample(ids[:5], uncalibrated[:5], uncalibrated[:5], 10, method, rng).task_ids.size
        == 5
    )


def test_calibration_weights_by_source() -> None:
    sources = np.array(["calibration", "calibration", "annotator", "review", "review"], dtype=object)
    p = np.array([0.5, 0.25, np.nan, np.nan, np.nan])
    excluded = calibration_weights(sources, p)
    assert excluded[3:].tolist() == [0.0, 0.0] and excluded[2] == 1.0
    assert excluded[1] == pytest.approx(2 * excluded[0])  # 1 / p
    assert calibration_weights(sources, p, "unweighted")[3:].tolist() == [1.0, 1.0]
    band = np.array([True, False, False, True, True])
    post = calibration_weights(sources, p, "poststratified", band)
    # the band keeps the total weight its sampled items gave it; the reviews share it
    assert post[band].sum() == pytest.approx(excluded[band].sum())
    assert post[~band].tolist() == excluded[~band].tolist()
    with pytest.raises(ValueError, match="unknown label source"):
        calibration_weights(np.array(["x"], dtype=object), np.array([1.0]))


def store_as_one_batch(store: LabelStore, threads: list[Any]) -> None:
    """Start threads that each record an event while the write lock is held, so that every event queues behind it
    and the leader stores them all in one batch; wait for them."""
    with store._write_lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(store._pending) < len(threads):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)


def test_an_event_that_fails_unforeseen_is_stored_ignored_and_its_batch_stored_again_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is first stored without savepoints; an event failing with an error nobody foresaw (not
    ``MalformedEvent``) rolls it back, and the batch is stored again event by event: the others applied, under
    consecutive ids in their order, the failed one ignored with its reason."""
    import threading

    from ls_backend.loop import store as store_module

    store = LabelStore(tmp_path / "labels.db")
    project = synthetic_project(20, seed=3)
    real_record = store_module.annotation_record

    def record_or_fail(annotation: Any, config: Any) -> Any:
        if isinstance(annotation, dict) and annotation.get("id") == 7_007:
            raise RuntimeError("unforeseen")
        return real_record(annotation, config)

    monkeypatch.setattr(store_module, "annotation_record", record_or_fail)
    payloads = [
        project.annotation_payload(i, 7_001 + i) for i in range(10)
    ]  # the 7th has annotation id 7_007
    outcomes: dict[int, Any] = {}
    threads = [
        threading.Thread(target=lambda i=i: outcomes.__setitem__(i, store.record_event(payloads[i])))
        for i in range(10)
    ]
    store_as_one_batch(store, threads)
    assert sorted(o.outcome for o in outcomes.values()) == ["applied"] * 9 + ["ignored"]
    failed = next(o for o in outcomes.values() if o.outcome == "ignored")
    assert "RuntimeError: unforeseen" in (failed.reason or "")
    ids = sorted(o.event_id for o in outcomes.values())
    assert ids == list(range(ids[0], ids[0] + 10))
    assert len(store.labels(project.project)) == 9


def test_events_waiting_for_the_write_lock_share_one_commit_and_are_counted(tmp_path: Path) -> None:
    import threading

    store = LabelStore(tmp_path / "labels.db")
    project = synthetic_project(12, seed=5)
    store.record_event(project.annotation_payload(0, 9_000))
    assert store.group_commit_counts() == (1, 1)
    threads = [
        threading.Thread(target=store.record_event, args=(project.annotation_payload(i, 9_000 + i),))
        for i in range(1, 11)
    ]
    store_as_one_batch(store, threads)
    assert store.group_commit_counts() == (2, 11)
    assert len(store.labels(project.project)) == 11


def test_every_write_goes_through_one_connection_and_other_threads_read_it(tmp_path: Path) -> None:
    import threading

    store = LabelStore(tmp_path / "labels.db")
    project = synthetic_project(8, seed=4)
    writers: set[int] = set()
    real_writer = store._connections.writer

    def spy() -> Any:
        connection = real_writer()
        writers.add(id(connection))
        return connection

    store._connections.writer = spy  # type: ignore[method-assign]
    threads = [
        threading.Thread(target=store.record_event, args=(project.annotation_payload(i, 100 + i),))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    store.set_texts(project.project, {1: "a text"})  # a write through transaction(), not the group commit
    assert len(writers) == 1
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(len(store.labels(project.project))))
    reader.start()
    reader.join(30)
    assert seen == [8]
    connection = real_writer()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")
