"""Refit and retrain in the background: per-LLM calibrators, the cascade policy, a held-out comparison with the
serving version, and promotion only when the candidate is not worse.

One retrain of a project runs at a time across threads and processes: :func:`retrain` holds an exclusive
``fcntl.flock`` on ``retrain.lock`` in the project's directory, which the OS releases if the process dies. A
killed retrain leaves no half-written version (versions are written atomically) and loses no label (labels
live in the store, which a retrain only reads).

Held-out labels: a task is held out when a hash of its id falls under ``holdout_fraction``. The rule is stable,
so no version ever trains on a held-out task, and candidate and serving version are compared on labels neither
saw. Which labels fit what: see :mod:`ls_backend.loop.weighting` and docs/learning-loop.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.calibration import Calibrator, make_calibrator
from ls_backend.ensemble.bins import quantile_edges
from ls_backend.ensemble.policy import train_policy
from ls_backend.loop.model import ServingModel, evaluate
from ls_backend.loop.store import LabelStore
from ls_backend.loop.versions import ModelVersion, VersionStore, utc_now
from ls_backend.loop.weighting import ReviewUse, calibration_weights

logger = logging.getLogger(__name__)

ScoreTexts = Callable[[int, list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``score_fn(llm_index, texts) -> (answers (n,), class logits (n, C), costs (n,))``, classes in the model's order."""


@dataclass
class LoopConfig:
    """Settings of the learning loop (per project; the server may read them from its configuration).

    Attributes:
        calibrator: calibrator name fitted per LLM (``ST``, ``SV``, ...).
        review_labels: how review labels enter the calibrators' fit (``exclude``, ``unweighted``,
            ``poststratified``); every label trains the policy.
        review_threshold: the review band's upper score (for ``poststratified``).
        holdout_fraction: share of labeled tasks held out for evaluation (by a stable hash of the task id).
        n_bins: bins per LLM of the tuned policy.
        n_trials: Optuna trials of the bin-edge tuning; ``tuning_timeout_s`` caps its time (None: no cap).
        n_splits: inner train/test splits per trial.
        lam: cost weight of the policy's reward (0: accuracy only).
        min_train_labels: fewer training labels than this: no retrain.
        min_tuning_labels: fewer than this: equal-frequency edges with ``max(2, n // 20)`` bins instead of tuning.
        min_calibration_labels: fewer calibrator labels than this: the serving version's calibrators are kept.
        min_holdout_labels: fewer held-out labels than this: the candidate cannot be compared and is not promoted.
        accuracy_tolerance, ace_tolerance: "not worse" means held-out accuracy >= serving's - accuracy_tolerance
            and held-out ACE <= serving's + ace_tolerance.
        retrain_every: a retrain is due after this many label changes since the latest version (0: never).
        seed: seed of the splits and the tuner.
    """

    calibrator: str = "ST"
    review_labels: ReviewUse = "unweighted"
    review_threshold: float = 0.7
    holdout_fraction: float = 0.2
    n_bins: int = 10
    n_trials: int = 100
    tuning_timeout_s: float | None = 20.0
    n_splits: int = 5
    lam: float = 0.0
    min_train_labels: int = 20
    min_tuning_labels: int = 200
    min_calibration_labels: int = 10
    min_holdout_labels: int = 20
    accuracy_tolerance: float = 0.005
    ace_tolerance: float = 0.01
    retrain_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        make_calibrator(self.calibrator)
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.n_bins < 2 or self.n_trials < 1 or self.n_splits < 1:
            raise ValueError("n_bins must be >= 2, n_trials and n_splits >= 1")
        if self.retrain_every < 0:
            raise ValueError(f"retrain_every must be >= 0, got {self.retrain_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown learning-loop setting(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class RetrainResult:
    """What a retrain did: ``promoted``, ``rejected``, ``skipped`` (nothing to do), ``busy`` (another retrain
    holds the lock) or ``failed``; the version it wrote, why, and how long it took."""

    status: str
    version: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the lock


@contextlib.contextmanager
def retrain_lock(
    path: str | os.PathLike[str], timeout_s: float = 0.0, poll_s: float = 0.05
) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (yields True), or yield False if it stays taken for ``timeout_s``.

    flock locks belong to an open file, so two threads of one process exclude each other too; the OS drops the
    lock when its process dies.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    acquired = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        if acquired:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield acquired
    finally:
        if acquired:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_is_free(path: str | os.PathLike[str]) -> bool:
    with retrain_lock(path) as acquired:
        return acquired


# ------------------------------------------------------------------------------------------------ pieces


def holdout_mask(task_ids: np.ndarray, fraction: float, salt: str) -> np.ndarray:
    """Stable held-out tasks: the splitmix64 hash of (task id, salt) mapped to [0, 1) falls under ``fraction``."""
    salt_value = np.uint64(int.from_bytes(salt.encode("utf-8")[:8].ljust(8, b"\0"), "little"))
    with np.errstate(over="ignore"):
        z = np.asarray(task_ids, dtype=np.int64).astype(np.uint64) ^ salt_value
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53) < fraction


def fit_calibrators(
    name: str, logits: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> list[Calibrator]:
    """One calibrator per LLM, fitted on the items with weight > 0: logits (L, n, C), labels (n,), weights (n,)."""
    use = weights > 0
    return [
        make_calibrator(name).fit(logits[k][use], labels[use], weights[use]) for k in range(logits.shape[0])
    ]


def _status_file(versions: VersionStore) -> Path:
    return versions.directory / "retrain.status.json"


def _write_status(versions: VersionStore, **fields: Any) -> None:
    path = _status_file(versions)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), **fields}))
    os.replace(temp, path)


def read_retrain_status(versions: VersionStore) -> dict[str, Any] | None:
    """The last retrain's progress record (``stage``, ``pid``, ``at``), None if no retrain ever ran."""
    try:
        return dict(json.loads(_status_file(versions).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _not_worse(candidate: dict[str, Any], serving: dict[str, Any], config: LoopConfig) -> tuple[bool, str]:
    acc_c, acc_s = candidate["accuracy"], serving["accuracy"]
    if acc_c < acc_s - config.accuracy_tolerance:
        return False, f"held-out accuracy {acc_c:.4f} < serving {acc_s:.4f} - {config.accuracy_tolerance}"
    ace_c, ace_s = candidate["ace"], serving["ace"]
    if math.isfinite(ace_c) and math.isfinite(ace_s) and ace_c > ace_s + config.ace_tolerance:
        return False, f"held-out ACE {ace_c:.4f} > serving {ace_s:.4f} + {config.ace_tolerance}"
    return True, f"held-out accuracy {acc_c:.4f} vs {acc_s:.4f}, ACE {ace_c:.4f} vs {ace_s:.4f}"


# ------------------------------------------------------------------------------------------------ retrain


def retrain(
    project: int,
    store: LabelStore,
    versions: VersionStore,
    score_fn: ScoreTexts,
    config: LoopConfig | None = None,
    *,
    trigger: str = "admin",
    lock_timeout_s: float = 0.0,
    force: bool = False,
) -> RetrainResult:
    """Refit the calibrators and retrain the policy on the project's labels; promote the candidate if it is not
    worse than the serving version on held-out labels. Returns at once with ``busy`` if another retrain holds
    the lock for ``lock_timeout_s``; ``skipped`` if no label changed since the latest version (unless ``force``).
    """
    config = config or LoopConfig()
    started = time.perf_counter()
    with retrain_lock(versions.lock_path, lock_timeout_s) as acquired:
        if not acquired:
            return RetrainResult("busy", reason="another retrain of this project is running")
        try:
            result = _retrain_locked(project, store, versions, score_fn, config, trigger, force)
        except Exception as e:
            logger.exception("retrain of project %s failed", project)
            _write_status(versions, stage="failed", error=str(e))
            return RetrainResult(
                "failed", reason=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - started
            )
    result.seconds = time.perf_counter() - started
    return result


def _retrain_locked(
    project: int,
    store: LabelStore,
    versions: VersionStore,
    score_fn: ScoreTexts,
    config: LoopConfig,
    trigger: str,
    force: bool,
) -> RetrainResult:
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    _write_status(versions, stage="reading labels", trigger=trigger)
    serving = versions.serving()
    latest = versions.latest()
    snapshot = store.labels(project)
    if not force and latest is not None and latest.labels.get("watermark", -1) >= snapshot.watermark:
        _write_status(versions, stage="done", outcome="skipped")
        return RetrainResult("skipped", reason=f"no label changed since version {latest.name}")
    model = serving.model
    class_index = {c: i for i, c in enumerate(model.classes)}
    known = np.array([label in class_index for label in snapshot.labels], dtype=bool)
    has_text = np.array([t is not None for t in snapshot.texts], dtype=bool)
    # the backend's own auto-accepted annotations are its predictions, not evidence: they train nothing
    human = snapshot.sources != "auto"
    skipped = {
        "label_outside_model_classes": int((~known & human).sum()),
        "no_text": int((known & ~has_text & human).sum()),
        "auto_accepted": int((~human).sum()),
    }
    data = snapshot.subset(known & has_text & human)
    labels = np.array([class_index[c] for c in data.labels], dtype=np.int64).reshape(len(data))
    held_out = holdout_mask(data.task_ids, config.holdout_fraction, salt=f"{project}")
    n_train, n_holdout = int((~held_out).sum()), int(held_out.sum())
    if n_train < config.min_train_labels:
        _write_status(versions, stage="done", outcome="skipped")
        return RetrainResult(
            "skipped", reason=f"{n_train} training labels < min_train_labels {config.min_train_labels}"
        )
    timings["read_labels"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _write_status(versions, stage="scoring", n_items=len(data))
    texts = [str(t) for t in data.texts]
    outputs = [score_fn(k, texts) for k in range(len(model.llms))]
    answers = np.stack([np.asarray(o[0], dtype=np.int64) for o in outputs])
    logits = np.stack([np.asarray(o[1], dtype=np.float64) for o in outputs])
    costs = np.stack([np.asarray(o[2], dtype=np.float64) for o in outputs])
    if logits.shape != (len(model.llms), len(data), len(model.classes)):
        raise ValueError(
            f"score_fn returned logits of shape {logits.shape[1:]} per LLM, expected {(len(data), len(model.classes))}"
        )
    timings["scoring"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _write_status(versions, stage="calibrating")
    train = ~held_out
    in_band = None
    if config.review_labels == "poststratified":
        in_band = model.predict(logits, answers, costs).scores < config.review_threshold
    weights = calibration_weights(data.sources, data.inclusion_probabilities, config.review_labels, in_band)
    train_weights = np.where(train, weights, 0.0)
    # The held-out ACE must estimate the whole task: review labels (a census of the low band) never count there.
    evaluation_weights = calibration_weights(data.sources, data.inclusion_probabilities, "exclude")
    n_calibration = int((train_weights > 0).sum())
    if n_calibration >= config.min_calibration_labels:
        calibrators = fit_calibrators(config.calibrator, logits, labels, train_weights)
        calibration_note = f"{config.calibrator} fitted on {n_calibration} labels"
    else:
        calibrators = model.calibrators
        calibration_note = f"kept the serving calibrators ({n_calibration} calibration labels < {config.min_calibration_labels})"
    candidate_scores = np.stack(
        [
            np.clip(calibrators[k].predict_proba(logits[k])[np.arange(len(data)), answers[k]], 0.0, 1.0)
            for k in range(len(model.llms))
        ]
    )
    timings["calibration"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _write_status(versions, stage="tuning", n_train=n_train, n_trials=config.n_trials)
    train_answers, train_scores, train_labels, train_costs = (
        answers[:, train], candidate_scores[:, train], labels[train], costs[:, train],
    )  # fmt: skip
    if n_train >= config.min_tuning_labels:
        from ls_backend.ensemble.tuning import tune_bin_edges

        tuned = tune_bin_edges(
            train_answers, train_scores, train_labels, costs=train_costs, n_bins=config.n_bins,
            n_trials=config.n_trials, n_splits=config.n_splits, seed=config.seed, lam=config.lam,
            n_classes=len(model.classes), timeout=config.tuning_timeout_s,
        )  # fmt: skip
        edges, tuning = tuned.edges, {"n_trials": tuned.n_trials, "best_f1": tuned.best_value}
    else:
        bins = max(2, min(config.n_bins, n_train // 20))
        edges = [quantile_edges(train_scores[k], bins) for k in range(len(model.llms))]
        tuning = {"n_trials": 0, "equal_frequency_bins": bins}
    timings["tuning"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _write_status(versions, stage="training policy")
    policy = train_policy(
        train_answers, train_scores, train_labels, edges, costs=train_costs, lam=config.lam,
        n_classes=len(model.classes), llms=model.llms, classes=model.classes,
        calibrators=[c.to_dict() for c in calibrators], metadata={"tuning": _clean(tuning)},
    )  # fmt: skip
    candidate = ServingModel(model.llms, model.classes, calibrators, policy)
    timings["policy"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _write_status(versions, stage="evaluating", n_holdout=n_holdout)
    evaluation: dict[str, Any] = {"n_holdout": n_holdout, "serving_version": serving.name}
    if n_holdout:
        h = held_out
        held = (logits[:, h], answers[:, h], costs[:, h], labels[h], evaluation_weights[h])
        evaluation["candidate"] = evaluate(candidate, *held)
        evaluation["serving"] = evaluate(model, *held)
    if n_holdout < config.min_holdout_labels:
        promote, reason = (
            False,
            f"{n_holdout} held-out labels < min_holdout_labels {config.min_holdout_labels}: cannot compare",
        )
    else:
        promote, reason = _not_worse(evaluation["candidate"], evaluation["serving"], config)
        if not promote:
            reason = "worse than the serving version: " + reason
    evaluation["decision"] = "promoted" if promote else "rejected"
    evaluation["reason"] = reason
    timings["evaluation"] = time.perf_counter() - tick
    sources = {s: int((data.sources == s).sum()) for s in ("calibration", "review", "annotator")}
    labels_used = {
        "n_labels": len(data),
        "n_train": n_train,
        "n_holdout": n_holdout,
        "by_source": sources,
        "n_calibration_fit": n_calibration,
        "watermark": snapshot.watermark,
        "skipped": skipped,
        "columns": ["task_id", "annotation_id", "updated_at_us", "label", "source", "split"],
        "items": [
            [int(t), int(a), int(u), str(c), str(s), "holdout" if ho else "train"]
            for t, a, u, c, s, ho in zip(
                data.task_ids,
                data.annotation_ids,
                data.updated_at_us,
                data.labels,
                data.sources,
                held_out,
                strict=True,
            )
        ],
    }
    metrics = {
        "calibration": calibration_note,
        "tuning": tuning,
        "train_accuracy": policy.metadata.get("train_accuracy"),
        "train_cost_per_item": policy.metadata.get("train_cost_per_item"),
        "timings_s": timings,
    }
    if n_holdout:
        metrics.update(
            holdout_accuracy=evaluation["candidate"]["accuracy"],
            holdout_ace=evaluation["candidate"]["ace"],
            holdout_cost_per_item=evaluation["candidate"]["cost_per_item"],
        )
        metrics["frontier"] = _holdout_frontier(
            train_answers, train_scores, train_labels, train_costs, edges, candidate,
            logits[:, held_out], answers[:, held_out], costs[:, held_out], labels[held_out],
        )  # fmt: skip
    _write_status(versions, stage="saving")
    version = versions.save(
        candidate, status="promoted" if promote else "rejected", parent=serving.name, trigger=trigger,
        metrics=_clean(metrics), evaluation=_clean(evaluation), labels=labels_used, config=config.to_dict(),
    )  # fmt: skip
    if promote:
        versions.promote(version.name)
    _write_status(versions, stage="done", outcome=evaluation["decision"], version=version.name)
    logger.info(
        "project %s: retrain wrote %s (%s: %s)", project, version.name, evaluation["decision"], reason
    )
    return RetrainResult(
        evaluation["decision"], version.name, reason, evaluation=_clean(evaluation), timings=timings
    )


def _holdout_frontier(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    costs: np.ndarray,
    edges: Sequence[np.ndarray],
    candidate: ServingModel,
    holdout_logits: np.ndarray,
    holdout_answers: np.ndarray,
    holdout_costs: np.ndarray,
    holdout_labels: np.ndarray,
    max_points: int = 20,
) -> list[dict[str, float]]:
    """The accuracy/cost frontier (policies trained with growing ``lam``), each evaluated on the held-out labels."""
    from ls_backend.ensemble.frontier import cost_frontier

    if not (costs > 0).any():
        return []
    points = cost_frontier(
        answers, scores, labels, edges, costs, n_classes=len(candidate.classes), max_points=max_points
    )
    result = []
    for point in points:
        model = ServingModel(candidate.llms, candidate.classes, candidate.calibrators, point.policy)
        served = model.predict(holdout_logits, holdout_answers, holdout_costs)
        result.append(
            {
                "lam": point.lam,
                "train_accuracy": point.accuracy,
                "train_cost_per_item": point.cost_per_item,
                "holdout_accuracy": float((served.predictions == holdout_labels).mean()),
                "holdout_cost_per_item": float(served.costs.mean()),
            }
        )
    return result


# ------------------------------------------------------------------------------------------------ the worker


class Worker:
    """A background thread that runs retrains of one project when they are due.

    Triggers: :meth:`request_retrain` (START_TRAINING, an admin), every ``config.retrain_every`` label changes
    since the latest version (checked on :meth:`notify_labels` and every ``poll_s``, so labels that reached
    another server process count too), and an admin's ``retrain.request`` file (``lwc retrain``). Requests that
    arrive while one is pending are coalesced; a retrain that finds the lock taken waits for it, then skips if the
    other retrain already covered every label. ``before_retrain`` runs in the worker's thread before each retrain
    (the server saves the project's ``initial`` out-of-task version there).
    """

    def __init__(
        self,
        project: int,
        store: LabelStore,
        versions: VersionStore,
        score_fn: ScoreTexts,
        config: LoopConfig | None = None,
        poll_s: float = 5.0,
        before_retrain: Callable[[], object] | None = None,
    ) -> None:
        self.project = project
        self.before_retrain = before_retrain
        self.store = store
        self.versions = versions
        self.score_fn = score_fn
        self.config = config or LoopConfig()
        self.poll_s = poll_s
        self.results: list[RetrainResult] = []
        self._pending: dict[str, bool] = {}  # reason -> force
        self._condition = threading.Condition()
        self._stopping = False
        self._running = False
        self._thread: threading.Thread | None = None

    # ---- control

    def start(self) -> Worker:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(
                target=self._loop, name=f"lwc-retrain-{self.project}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the retrain in progress, if any (it is not interrupted)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_retrain(self, reason: str = "admin", force: bool = False) -> None:
        """Ask for a retrain (returns at once); requests pending together run once."""
        with self._condition:
            self._pending[reason] = self._pending.get(reason, False) or force
            self._condition.notify_all()

    def notify_labels(self) -> bool:
        """Call after a label changed: requests a retrain when ``retrain_every`` changes have accumulated."""
        if self.retrain_due():
            self.request_retrain("every_n_labels")
            return True
        return False

    def retrain_due(self) -> bool:
        if self.config.retrain_every <= 0:
            return False
        latest = self.versions.latest()
        watermark = int(latest.labels.get("watermark", 0)) if latest is not None else 0
        return self.store.changes_since(self.project, watermark) >= self.config.retrain_every

    @property
    def busy(self) -> bool:
        return self._running or bool(self._pending)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is pending or running (for tests and the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.busy:
                return True
            time.sleep(0.02)
        return False

    # ---- the thread

    def _take_admin_request(self) -> None:
        path = self.versions.request_path
        with contextlib.suppress(FileNotFoundError):
            note = path.read_text().strip()
            path.unlink()
            self.request_retrain(f"admin_request{': ' + note if note else ''}", force=True)

    def _loop(self) -> None:
        while True:
            with self._condition:
                if not self._pending and not self._stopping:
                    self._condition.wait(self.poll_s)
                if self._stopping:
                    return
            self._take_admin_request()
            with contextlib.suppress(Exception):
                if not self._pending and self.retrain_due():
                    self.request_retrain("every_n_labels")
            with self._condition:
                if not self._pending:
                    continue
                reasons, self._pending = self._pending, {}
                self._running = True
            try:
                if self.before_retrain is not None:
                    self.before_retrain()
                result = retrain(
                    self.project, self.store, self.versions, self.score_fn, self.config,
                    trigger=", ".join(sorted(reasons)), lock_timeout_s=3600.0, force=any(reasons.values()),
                )  # fmt: skip
                self.results.append(result)
            except Exception:
                logger.exception("worker of project %s: retrain crashed", self.project)
            finally:
                self._running = False


def current_version(versions: VersionStore) -> ModelVersion:
    """The version to serve now (``/setup``'s model_version and ``/predict``)."""
    return versions.serving()


def request_retrain_file(versions: VersionStore, note: str = "") -> Path:
    """Ask the project's workers (in any process) for a retrain: writes ``retrain.request``; returns its path."""
    versions.request_path.write_text(note or f"lwc retrain at {utc_now().isoformat()}")
    return versions.request_path
