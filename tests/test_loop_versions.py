"""Model versions (atomic JSON, listing, corrupted files, rollback), retrain with promotion only when not worse,
and the background worker's triggers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from ls_backend.calibration import make_calibrator
from ls_backend.loop import (
    LabelStore,
    LoopConfig,
    ServingModel,
    VersionError,
    VersionStore,
    Worker,
    request_retrain_file,
    retrain,
    threshold_policy,
)
from ls_backend.loop.simulation import SyntheticProject, synthetic_project
from ls_backend.loop.trainer import holdout_mask, lock_is_free

FAST = LoopConfig(n_trials=5, n_splits=2, tuning_timeout_s=None, min_tuning_labels=150)


def initial_model(project: SyntheticProject) -> ServingModel:
    return ServingModel.out_of_task(project.llms, project.classes)


def label_all(
    store: LabelStore, project: SyntheticProject, positions, seconds: float = 0.0, flip=None
) -> None:
    for position in positions:
        choice = None
        if flip is not None and flip[position]:
            choice = project.classes[1 - int(project.labels[position])]
        store.record_event(project.annotation_payload(int(position), 10_000 + int(position), choice=choice,
                                                      action="ANNOTATION_UPDATED", seconds=seconds))  # fmt: skip


@pytest.fixture
def project() -> SyntheticProject:
    return synthetic_project(600, seed=2)


@pytest.fixture
def stores(tmp_path: Path, project: SyntheticProject) -> tuple[LabelStore, VersionStore]:
    versions = VersionStore(tmp_path / "models", 1)
    versions.ensure_initial(initial_model(project))
    return LabelStore(tmp_path / "labels.db"), versions


def test_serving_model_json_round_trip_predicts_the_same(project: SyntheticProject) -> None:
    calibrators = [make_calibrator("ST").fit(project.logits[k], project.labels) for k in range(3)]
    model = ServingModel(
        project.llms, project.classes, calibrators, threshold_policy(project.llms, project.classes)
    )
    again = ServingModel.from_dict(json.loads(json.dumps(model.to_dict())))
    a, b = (
        model.predict(project.logits, project.answers, project.costs),
        again.predict(project.logits, project.answers, project.costs),
    )
    assert np.array_equal(a.predictions, b.predictions) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.costs, b.costs)


def test_threshold_policy_asks_deeper_only_below_the_threshold(project: SyntheticProject) -> None:
    model = initial_model(project)
    served = model.predict(project.logits, project.answers, project.costs)
    first_scores = model.calibrated_probabilities(0, project.logits[0]).max(axis=1)
    assert np.array_equal(served.depth == 1, first_scores >= 0.8)
    stopped = served.depth == 1
    assert np.array_equal(served.predictions[stopped], project.answers[0, stopped])
    assert np.allclose(served.scores[stopped], first_scores[stopped])
    assert np.allclose(
        served.costs, np.where(np.arange(3)[:, None] < served.depth, project.costs, 0).sum(axis=0)
    )


def test_versions_are_listed_in_order_and_rollback(stores, project: SyntheticProject) -> None:
    _, versions = stores
    model = initial_model(project)
    saved = [versions.save(model, status="promoted", trigger=f"t{i}") for i in range(11)]
    names = versions.names()
    assert names == [versions.names()[0], *[v.name for v in saved]]
    assert [int(n[1:5]) for n in names] == list(range(1, 13))
    for version in saved[:3]:
        versions.promote(version.name)
    assert versions.serving().name == saved[2].name
    assert versions.rollback().name == saved[1].name
    assert versions.rollback(names[0]).name == names[0]
    listing = versions.list()
    assert [e["name"] for e in listing] == names and [e["serving"] for e in listing].count(True) == 1
    with pytest.raises(VersionError, match="does not exist"):
        versions.rollback("v9999-20260101T000000Z")


def test_a_corrupted_version_file_is_refused_and_the_previous_one_serves(stores, project) -> None:
    _, versions = stores
    initial = versions.serving().name
    newer = versions.save(initial_model(project), status="promoted")
    versions.promote(newer.name)
    versions.path_of(newer.name).write_text('{"format": "lwc-model-version", "format_ver')  # torn write
    with pytest.raises(VersionError, match="corrupted"):
        versions.load(newer.name)
    assert versions.serving().name == initial
    assert "corrupted" in versions.last_fallback
    listing = {e["name"]: e for e in versions.list()}
    assert listing[newer.name]["status"] == "invalid" and listing[initial]["serving"]
    # valid JSON, invalid content: refused with the problem named
    data = versions.load(initial).to_dict()
    data["model"]["policy"]["actions"][0] = [0]
    bad = versions.save(initial_model(project), status="promoted")
    versions.path_of(bad.name).write_text(json.dumps({**data, "name": bad.name}))
    with pytest.raises(VersionError, match="invalid model"):
        versions.load(bad.name)
    with pytest.raises(VersionError, match="rejected"):
        versions.promote(versions.save(initial_model(project), status="rejected").name)


def test_retrain_promotes_a_better_candidate_and_stores_its_evaluation(stores, project) -> None:
    store, versions = stores
    label_all(store, project, range(400))
    result = retrain(1, store, versions, project.score_fn, FAST)
    assert result.status == "promoted", result.reason
    version = versions.serving()
    assert version.name == result.version and version.parent == versions.names()[0]
    evaluation = version.evaluation
    assert evaluation["candidate"]["accuracy"] >= evaluation["serving"]["accuracy"] - FAST.accuracy_tolerance
    used = version.labels
    assert used["n_labels"] == 400 and used["n_train"] + used["n_holdout"] == 400
    held = {row[0] for row in used["items"] if row[-1] == "holdout"}
    expected = holdout_mask(project.task_ids[:400], FAST.holdout_fraction, "1")
    assert held == set(project.task_ids[:400][expected].tolist())
    # nothing changed: skipped; forced: runs again
    assert retrain(1, store, versions, project.score_fn, FAST).status == "skipped"
    assert retrain(1, store, versions, project.score_fn, FAST, force=True).status in ("promoted", "rejected")


def test_a_worse_candidate_is_not_promoted_and_its_evaluation_is_kept(stores, project) -> None:
    store, versions = stores
    label_all(store, project, range(400))
    good = retrain(1, store, versions, project.score_fn, FAST)
    assert good.status == "promoted"
    # annotators now flip every training label; held-out tasks keep their true labels
    flip = ~holdout_mask(project.task_ids, FAST.holdout_fraction, "1")
    label_all(store, project, range(400), seconds=60.0, flip=flip)
    worse = retrain(1, store, versions, project.score_fn, FAST)
    assert worse.status == "rejected"
    assert "worse than the serving version" in worse.reason
    assert versions.serving().name == good.version
    rejected = versions.load(worse.version)
    assert rejected.status == "rejected" and rejected.evaluation["decision"] == "rejected"
    assert rejected.evaluation["candidate"]["accuracy"] < rejected.evaluation["serving"]["accuracy"]


def test_too_few_labels_skip_or_cannot_compare(stores, project) -> None:
    store, versions = stores
    label_all(store, project, range(10))
    assert retrain(1, store, versions, project.score_fn, FAST).status == "skipped"
    label_all(store, project, range(10, 60))
    config = LoopConfig(**{**FAST.to_dict(), "min_holdout_labels": 1000})
    result = retrain(1, store, versions, project.score_fn, config)
    assert result.status == "rejected" and "cannot compare" in result.reason


def test_with_few_labels_the_guard_cross_validates_and_every_label_trains(stores, project) -> None:
    store, versions = stores
    label_all(store, project, range(50))  # 50 labels: about 10 held out, fewer than min_holdout_labels (20)
    result = retrain(1, store, versions, project.score_fn, FAST)
    assert result.status == "promoted", result.reason
    assert "cross-validated" in result.reason
    version = versions.serving()
    assert version.evaluation["guard"] == "5-fold cross-validation over 50 labels"
    assert version.evaluation["candidate"]["n_items"] == 50  # every label predicted out of fold
    assert version.labels["n_train"] == 50 and version.labels["n_holdout"] == 0
    off = LoopConfig(**{**FAST.to_dict(), "cv_folds": 0})
    label_all(store, project, range(50, 55))
    assert "cannot compare" in retrain(1, store, versions, project.score_fn, off).reason
    with pytest.raises(ValueError, match="cv_folds"):
        LoopConfig(cv_folds=1)


def test_a_failing_score_function_fails_the_retrain_and_frees_the_lock(stores, project) -> None:
    store, versions = stores
    label_all(store, project, range(100))

    def broken(k: int, texts: list[str]):
        raise RuntimeError("LLM down")

    result = retrain(1, store, versions, broken, FAST)
    assert result.status == "failed" and "LLM down" in result.reason
    assert lock_is_free(versions.lock_path)


def test_a_worker_logs_a_failing_retrain_check_and_keeps_running(stores, project, caplog) -> None:
    store, versions = stores
    config = LoopConfig(**{**FAST.to_dict(), "retrain_every": 100})
    worker = Worker(1, store, versions, project.score_fn, config, poll_s=0.02)
    checks = []

    def broken() -> bool:
        checks.append(time.monotonic())
        raise RuntimeError("database is locked")

    worker.retrain_due = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="ls_backend.loop.trainer"):
        worker.start()
        try:
            deadline = time.monotonic() + 10
            while len(checks) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            worker.stop()
    assert len(checks) >= 3  # the thread survived the first failure and checked again
    assert "checking whether a retrain is due failed" in caplog.text and "database is locked" in caplog.text


def test_worker_retrains_every_n_labels_and_on_request(stores, project) -> None:
    store, versions = stores
    config = LoopConfig(**{**FAST.to_dict(), "retrain_every": 100})
    worker = Worker(1, store, versions, project.score_fn, config, poll_s=3600).start()
    try:
        label_all(store, project, range(99))
        assert not worker.notify_labels()
        label_all(store, project, range(99, 150))
        assert worker.notify_labels()
        assert worker.wait_idle(60)
        assert len(worker.results) == 1 and worker.results[0].status in ("promoted", "rejected")
        # requests pending together run once
        with worker._condition:
            for reason in ("START_TRAINING", "admin", "START_TRAINING"):
                worker._pending[reason] = True
        with worker._condition:
            worker._condition.notify_all()
        assert worker.wait_idle(60)
        assert len(worker.results) == 2
        # an admin's request file (lwc retrain) is picked up by the worker
        worker.poll_s = 0.05
        worker.request_retrain("wake up")  # the thread waits with the old poll interval until woken
        assert worker.wait_idle(60)
        request_retrain_file(versions, "from the CLI")
        deadline = time.monotonic() + 30
        while len(worker.results) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(worker.results) == 4 and "admin_request" in versions.latest().trigger
    finally:
        worker.stop()


def test_cli_status_versions_rollback_retrain_report(tmp_path: Path, project, capsys) -> None:
    from ls_backend.cli import main

    store = LabelStore(tmp_path / "labels.db")
    versions = VersionStore(tmp_path, 1)
    initial = versions.ensure_initial(initial_model(project)).name
    label_all(store, project, range(400))
    promoted = retrain(1, store, versions, project.score_fn, FAST).version
    common = ["--model-dir", str(tmp_path), "--project", "1"]
    assert main(["versions", *common]) == 0
    out = capsys.readouterr().out
    assert out.index(initial) < out.index(promoted) and f"* {promoted}" in out
    assert main(["status", *common, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["serving"]["name"] == promoted and status["labels_by_source"]["annotator"] == 400
    assert main(["report", *common, "--out", str(tmp_path / "figs")]) == 0
    assert {p.name.split("-")[0] for p in (tmp_path / "figs").glob("*.png")} == {"reliability", "frontier"}
    assert main(["rollback", *common]) == 0
    assert versions.serving().name == initial
    assert main(["retrain", *common, "--note", "please"]) == 0
    assert versions.request_path.read_text() == "please"
    assert main(["status", *common]) == 0 and "serving" in capsys.readouterr().out


@pytest.mark.parametrize(("use", "fits_reviews"), [("exclude", False), ("unweighted", True)])
def test_review_labels_fit_as_configured_and_never_count_in_held_out_ace(
    stores, project, use, fits_reviews
) -> None:
    store, versions = stores
    store.mark_requests(1, project.task_ids[:200], "review", "v0001")
    label_all(store, project, range(400))
    config = LoopConfig(**{**FAST.to_dict(), "review_labels": use})
    result = retrain(1, store, versions, project.score_fn, config, force=True)
    version = versions.load(result.version)
    items = version.labels["items"]
    train_reviews = sum(1 for row in items if row[4] == "review" and row[5] == "train")
    train_others = sum(1 for row in items if row[4] != "review" and row[5] == "train")
    assert version.labels["by_source"] == {"calibration": 0, "review": 200, "annotator": 200}
    assert version.labels["n_calibration_fit"] == train_others + (train_reviews if fits_reviews else 0)
    holdout_others = sum(1 for row in items if row[4] != "review" and row[5] == "holdout")
    assert version.evaluation["candidate"]["n_calibration_items"] == holdout_others
