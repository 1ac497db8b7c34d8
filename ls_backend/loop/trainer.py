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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from annotated_types import Ge, Gt, Interval
from pydantic import AfterValidator, ValidationError

from ls_backend.calibration import BiasCorrection, Calibrator, CorrectedCalibrator, make_calibrator
from ls_backend.files import atomic_write_text
from ls_backend.loop.fitting import InTaskSettings, fit_in_task_model
from ls_backend.loop.model import ServingModel, check_answer_rules, evaluate
from ls_backend.loop.store import LabelStore
from ls_backend.loop.versions import ModelVersion, VersionStore, utc_now
from ls_backend.loop.weighting import ReviewUse, calibration_weights
from ls_backend.metrics import reliability_bins, weighted_ace
from ls_backend.settings import Real, Settings, SettingsError, problems
from ls_backend.student import NAME as STUDENT
from ls_backend.student import EmbeddingStudent

logger = logging.getLogger(__name__)

ScoreTexts = Callable[[int, list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``score_fn(llm_index, texts) -> (answers (n,), class logits (n, C), costs (n,))``, classes in the model's order."""

TuneEdges = Callable[..., Any]
"""Tunes bin edges: :func:`ls_backend.ensemble.tuning.tune_bin_edges`'s signature, a result with ``edges``,
``n_trials`` and ``best_value`` (:func:`ls_backend.loop.tuning.tune_in_subprocess` runs it in another process)."""


COST_WEIGHT = 0.3
"""The learning loop's default ``cost_weight``, chosen by ``scripts/cost_weight_study.py``: the largest weight of
its grid whose mean accuracy on the benchmark, over every label count, stays within ``accuracy_tolerance`` (the
promotion guard's) of weight 0 (docs/benchmark/cost_weight.md)."""


def _known_calibrator(name: str) -> str:
    make_calibrator(name)  # its error names the calibrators there are
    return name


def _off_or_at_least_two(folds: int) -> int:
    if folds == 1:
        raise ValueError(f"must be 0 (off) or >= 2, got {folds}")
    return folds


class LoopConfig(Settings):
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
        lam: cost weight of the policy's reward in hits per unit of the LLMs' cost (0: accuracy only).
        cost_weight: a cost weight in the project's own units, added to ``lam``: hits per item that asking every
            member (the student and all LLMs) is worth (:class:`ls_backend.loop.fitting.InTaskSettings`); the
            default is chosen by ``scripts/cost_weight_study.py`` (docs/benchmark/cost_weight.md).
        min_train_labels: fewer training labels than this: no retrain.
        min_tuning_labels: fewer than this: equal-frequency edges with ``max(2, n // 20)`` bins instead of tuning.
        min_calibration_labels: fewer calibrator labels than this: the serving version's calibrators are kept.
        min_holdout_labels: fewer held-out labels than this: the candidate cannot be compared and is not promoted.
        accuracy_tolerance, ace_tolerance: "not worse" means held-out accuracy >= serving's - accuracy_tolerance
            and held-out ACE <= serving's + ace_tolerance.
        retrain_every: a retrain is due after this many label changes since the latest version (0: never).
        seed: seed of the splits and the tuner.
        answer: the answer rule of the candidate's LLMs (``llm`` or ``calibrated``; None: the serving version's).
        cv_folds: with fewer held-out labels than ``min_holdout_labels`` but at least that many labels in all,
            candidate and serving version are compared by ``cv_folds``-fold cross-validation over every label and
            the candidate is then fitted on all of them (0: never; such a retrain cannot compare).
        student: fit the student (``ls_backend.student``: logistic regression on sentence embeddings of the
            labeled texts) as the candidate's member 0 when the server gives the retrain an ``embed_fn``.
        student_min_labels: fewer training labels than this (or a single class): no student.
        student_c: the student's inverse L2 strength.
    """

    calibrator: Annotated[str, AfterValidator(_known_calibrator)] = "ST"
    review_labels: ReviewUse = "unweighted"
    review_threshold: Annotated[Real, Interval(ge=0, le=1)] = 0.7
    holdout_fraction: Annotated[Real, Interval(gt=0, lt=1)] = 0.2
    n_bins: Annotated[int, Ge(2)] = 10
    n_trials: Annotated[int, Ge(1)] = 100
    tuning_timeout_s: Annotated[Real, Gt(0)] | None = 20.0
    n_splits: Annotated[int, Ge(1)] = 5
    lam: Annotated[Real, Ge(0)] = 0.0
    cost_weight: Annotated[Real, Ge(0)] = COST_WEIGHT
    min_train_labels: Annotated[int, Ge(1)] = 20
    min_tuning_labels: Annotated[int, Ge(1)] = 200
    min_calibration_labels: Annotated[int, Ge(1)] = 10
    min_holdout_labels: Annotated[int, Ge(0)] = 20
    accuracy_tolerance: Annotated[Real, Interval(ge=0, le=1)] = 0.005
    ace_tolerance: Annotated[Real, Interval(ge=0, le=1)] = 0.01
    retrain_every: Annotated[int, Ge(0)] = 50
    seed: Annotated[int, Ge(0)] = 0
    answer: Literal["llm", "calibrated"] | None = None
    cv_folds: Annotated[int, Ge(0), AfterValidator(_off_or_at_least_two)] = 5
    student: bool = True
    student_min_labels: Annotated[int, Ge(2)] = 20
    student_c: Annotated[Real, Gt(0)] = 1.0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def in_task_settings(self) -> InTaskSettings:
        """What :func:`ls_backend.loop.fitting.fit_in_task_model` takes from these settings."""
        return InTaskSettings(
            calibrator=self.calibrator, n_bins=self.n_bins, min_tuning_labels=self.min_tuning_labels,
            n_trials=self.n_trials, n_splits=self.n_splits, seed=self.seed, lam=self.lam,
            tuning_timeout_s=self.tuning_timeout_s, cost_weight=self.cost_weight,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoopConfig:
        """The settings of a mapping (a saved version's ``config``); :class:`SettingsError` says what is wrong."""
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise SettingsError("; ".join(problems(e, cls))) from None


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
    return stable_unit(task_ids, salt) < fraction


def cv_folds(task_ids: np.ndarray, n_folds: int, salt: str) -> np.ndarray:
    """A stable fold in ``[0, n_folds)`` per task, from the same hash as :func:`holdout_mask`."""
    return np.minimum((stable_unit(task_ids, salt) * n_folds).astype(np.int64), n_folds - 1)


def stable_unit(task_ids: np.ndarray, salt: str) -> np.ndarray:
    """The splitmix64 hash of (task id, salt) mapped to [0, 1): the same number for a task in every retrain."""
    salt_value = np.uint64(int.from_bytes(salt.encode("utf-8")[:8].ljust(8, b"\0"), "little"))
    with np.errstate(over="ignore"):
        z = np.asarray(task_ids, dtype=np.int64).astype(np.uint64) ^ salt_value
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def correction_of(calibrator: Calibrator) -> BiasCorrection | None:
    """The label-free correction in front of a served calibrator (None: it has none); a retrain keeps it."""
    return calibrator.correction if isinstance(calibrator, CorrectedCalibrator) else None


def _status_file(versions: VersionStore) -> Path:
    return versions.directory / "retrain.status.json"


def _write_status(versions: VersionStore, **fields: Any) -> None:
    atomic_write_text(_status_file(versions), json.dumps({"pid": os.getpid(), "at": time.time(), **fields}))


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
    tune: TuneEdges | None = None,
    embed_fn: EmbedTexts | None = None,
) -> RetrainResult:
    """Refit the calibrators and retrain the policy on the project's labels; promote the candidate if it is not
    worse than the serving version on held-out labels. Returns at once with ``busy`` if another retrain holds
    the lock for ``lock_timeout_s``; ``skipped`` if no label changed since the latest version (unless ``force``).
    ``tune``: what tunes the bin edges (default: :func:`ls_backend.ensemble.tuning.tune_bin_edges` in this
    thread; the server passes :func:`ls_backend.loop.tuning.tune_in_subprocess`). ``embed_fn`` embeds texts for the
    student (see :data:`EmbedTexts`); without it the candidate has no student, and a serving version that has one
    cannot be evaluated (the retrain fails).
    """
    config = config or LoopConfig()
    started = time.perf_counter()
    with retrain_lock(versions.lock_path, lock_timeout_s) as acquired:
        if not acquired:
            return RetrainResult("busy", reason="another retrain of this project is running")
        try:
            result = _retrain_locked(
                project, store, versions, score_fn, config, trigger, force, tune, embed_fn
            )
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
    tune: TuneEdges | None = None,
    embed_fn: EmbedTexts | None = None,
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
    llm_names = model.llm_names
    outputs = [score_fn(k, texts) for k in range(len(llm_names))]
    answers = np.stack([np.asarray(o[0], dtype=np.int64) for o in outputs])
    logits = np.stack([np.asarray(o[1], dtype=np.float64) for o in outputs])
    costs = np.stack([np.asarray(o[2], dtype=np.float64) for o in outputs])
    if logits.shape != (len(llm_names), len(data), len(model.classes)):
        raise ValueError(
            f"score_fn returned logits of shape {logits.shape[1:]} per LLM, expected {(len(data), len(model.classes))}"
        )
    vectors: np.ndarray | None = None
    embed_costs: np.ndarray = np.zeros(len(data))
    if embed_fn is not None and (config.student or model.student is not None):
        embedded, seconds = embed_fn(texts)
        vectors, embed_costs = np.asarray(embedded, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    elif model.student is not None:
        raise ValueError("the serving version has a student: the retrain needs embed_fn to evaluate it")
    members = _Members(logits, answers, costs, vectors, embed_costs)
    timings["scoring"] = time.perf_counter() - tick

    cross_validate = (
        n_holdout < config.min_holdout_labels
        and config.cv_folds >= 2
        and len(data) >= config.min_holdout_labels
    )
    if cross_validate:  # few labels: every label trains the candidate, the guard comes from cross-validation
        held_out = np.zeros(len(data), dtype=bool)
        n_train, n_holdout = len(data), 0

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
    llm_calibrators = model.calibrators[1:] if model.student is not None else model.calibrators
    llm_rules = model.answer[1:] if model.student is not None else model.answer
    corrections = [correction_of(c) for c in llm_calibrators]
    calibrators: list[Calibrator] | None = None
    if n_calibration >= config.min_calibration_labels:
        calibration_note = f"{config.calibrator} fitted on {n_calibration} labels"
    else:
        calibrators = list(llm_calibrators)
        calibration_note = f"kept the serving calibrators ({n_calibration} calibration labels < {config.min_calibration_labels})"
    timings["calibration"] = time.perf_counter() - tick

    def fit(rows: np.ndarray) -> Any:
        student = None
        if (
            vectors is not None and config.student and calibrators is None
            and rows.sum() >= config.student_min_labels and np.unique(labels[rows]).size >= 2
        ):  # fmt: skip
            student = EmbeddingStudent(len(model.classes), C=config.student_c, seed=config.seed)
            student.fit(vectors[rows], labels[rows])
        fit_logits, fit_answers, fit_costs = members.training(rows, student)
        return fit_in_task_model(
            members.names(llm_names, student), model.classes, fit_logits, fit_answers, labels[rows], fit_costs,
            # a student answers with its own decision (its argmax); each LLM keeps the loop's or the serving rule
            ([None] if student else []) + corrections,
            (["llm"] if student else []) + list(check_answer_rules(config.answer or llm_rules, len(llm_names))),
            config.in_task_settings(),
            calibration_weights=train_weights[rows], calibrators=calibrators, tune=tune, student=student,
        )  # fmt: skip

    tick = time.perf_counter()
    _write_status(versions, stage="tuning", n_train=n_train, n_trials=config.n_trials)
    fitted = fit(train)
    candidate, edges, tuning = fitted.model, fitted.edges, _clean(fitted.tuning)
    policy = candidate.policy
    train_answers, train_scores, train_labels, train_costs = (
        fitted.answers, fitted.scores, labels[train], members.training(train, candidate.student)[2],
    )  # fmt: skip
    timings["tuning"] = time.perf_counter() - tick

    tick = time.perf_counter()
    _write_status(versions, stage="evaluating", n_holdout=n_holdout)
    evaluation: dict[str, Any] = {"n_holdout": n_holdout, "serving_version": serving.name}
    if cross_validate:
        folds = cv_folds(data.task_ids, config.cv_folds, salt=f"{project}")
        evaluation["guard"] = f"{config.cv_folds}-fold cross-validation over {len(data)} labels"
        every = np.ones(len(data), dtype=bool)
        evaluation["candidate"] = _cross_validated(fit, folds, members, labels, evaluation_weights)
        evaluation["serving"] = evaluate(model, *members.serving(every, model), labels, evaluation_weights)
        promote, reason = _not_worse(evaluation["candidate"], evaluation["serving"], config)
        reason = ("" if promote else "worse than the serving version: ") + reason + " (cross-validated)"
    else:
        evaluation["guard"] = "held-out labels"
        if n_holdout:
            h = held_out
            evaluation["candidate"] = evaluate(
                candidate, *members.serving(h, candidate), labels[h], evaluation_weights[h]
            )
            evaluation["serving"] = evaluate(
                model, *members.serving(h, model), labels[h], evaluation_weights[h]
            )
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
            *members.serving(held_out, candidate), labels[held_out],
        )  # fmt: skip
    if candidate.student is not None:
        metrics["student"] = {
            "n_labels": candidate.student.n_labels_,
            "temperature": candidate.student.calibrator_.a_,
        }
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


EmbedTexts = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
"""``embed_fn(texts) -> (embeddings (n, d), seconds per text (n,))``: the student's input and its cost."""


@dataclass
class _Members:
    """The labeled texts' outputs: each LLM's (L, n, C) logits, (L, n) answers and costs, and the embeddings
    (n, d) with their costs (n,) for a student (None: no embed_fn)."""

    logits: np.ndarray
    answers: np.ndarray
    costs: np.ndarray
    vectors: np.ndarray | None
    embed_costs: np.ndarray

    @staticmethod
    def names(llms: Sequence[str], student: EmbeddingStudent | None) -> tuple[str, ...]:
        return (STUDENT, *llms) if student is not None else tuple(llms)

    def training(
        self, rows: np.ndarray, student: EmbeddingStudent | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a candidate trains on for ``rows``: a student's out-of-fold logits as member 0, then the LLMs."""
        if student is None:
            return self.logits[:, rows], self.answers[:, rows], self.costs[:, rows]
        return self._stack(rows, student.oof_logits_)

    def serving(self, rows: np.ndarray, model: ServingModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What ``model`` sees for ``rows`` (texts it was not fitted on): its student's logits, then the LLMs."""
        if model.student is None:
            return self.logits[:, rows], self.answers[:, rows], self.costs[:, rows]
        if self.vectors is None:
            raise ValueError("a model with a student needs the texts' embeddings")
        return self._stack(rows, model.student.logits(self.vectors[rows]))

    def _stack(self, rows: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.concatenate([first[None], self.logits[:, rows]]),
            np.concatenate([first.argmax(axis=1)[None], self.answers[:, rows]]),
            np.concatenate([self.embed_costs[rows][None], self.costs[:, rows]]),
        )


def _cross_validated(
    fit: Callable[[np.ndarray], Any],
    folds: np.ndarray,
    members: _Members,
    labels: np.ndarray,
    weights: np.ndarray,
) -> dict[str, Any]:
    """The candidate's metrics from out-of-fold predictions: each fold served by a candidate fitted on the others
    (a fold is skipped when the others hold a single class). Same keys as :func:`ls_backend.loop.model.evaluate`."""
    n = labels.size
    predictions, scores, spent = np.full(n, -1), np.full(n, np.nan), np.zeros(n)
    for fold in np.unique(folds):
        rest = folds != fold
        if np.unique(labels[rest]).size < 2:
            continue
        model = fit(rest).model
        served = model.predict(*members.serving(~rest, model))
        predictions[~rest], scores[~rest], spent[~rest] = served.predictions, served.scores, served.costs
    done = predictions >= 0
    hits = predictions[done] == labels[done]
    w = np.nan_to_num(weights[done], nan=0.0)
    result: dict[str, Any] = {
        "n_items": int(done.sum()),
        "accuracy": float(hits.mean()) if done.any() else float("nan"),
        "cost_per_item": float(spent[done].mean()) if done.any() else float("nan"),
        "n_calibration_items": int((w > 0).sum()),
        "ace": float("nan"),
        "reliability": None,
    }
    if (w > 0).any():
        use = w > 0
        bins = min(10, int(use.sum()))
        result["ace"] = weighted_ace(scores[done][use], hits[use], w[use], bins)
        result["reliability"] = reliability_bins(scores[done][use], hits[use], w[use], bins)
    return result


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
        model = ServingModel(
            candidate.llms,
            candidate.classes,
            candidate.calibrators,
            point.policy,
            candidate.answer,
            candidate.student,
        )
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

    With ``idle_stop_s``, the thread ends after that many seconds with nothing to do; :meth:`request_retrain` (and
    so :meth:`notify_labels` when a retrain is due) and :meth:`wake` start it again, so a server with many quiet
    projects holds threads only for the busy ones. ``tune`` and ``embed_fn`` are passed to :func:`retrain`.
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
        idle_stop_s: float | None = None,
        tune: TuneEdges | None = None,
        embed_fn: EmbedTexts | None = None,
    ) -> None:
        self.project = project
        self.embed_fn = embed_fn
        self.before_retrain = before_retrain
        self.idle_stop_s = idle_stop_s
        self.tune = tune
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
        self._alive = False  # a thread runs _loop (set and cleared under _condition)
        self._thread: threading.Thread | None = None

    # ---- control

    def start(self) -> Worker:
        with self._condition:
            self._stopping = False
            self._start_locked()
        return self

    def _start_locked(self) -> None:
        if not self._alive and not self._stopping:
            self._alive = True
            self._thread = threading.Thread(
                target=self._loop, name=f"lwc-retrain-{self.project}", daemon=True
            )
            self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the worker's thread runs (it may have stopped for being idle)."""
        return self._alive

    def wake(self) -> bool:
        """Start the thread again if it stopped for being idle and an admin asked for a retrain
        (``retrain.request``); returns whether it did."""
        if self._alive or not self.versions.request_path.exists():
            return False
        with self._condition:
            self._start_locked()
        return True

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the retrain in progress, if any (it is not interrupted)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def request_retrain(self, reason: str = "admin", force: bool = False) -> None:
        """Ask for a retrain (returns at once); requests pending together run once."""
        with self._condition:
            self._pending[reason] = self._pending.get(reason, False) or force
            self._start_locked()
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
        try:
            self._serve()
        finally:
            with self._condition:
                self._alive = False
                if self._pending and not self._stopping:  # asked for between the last check and the exit
                    self._start_locked()

    def _serve(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._condition:
                if not self._pending and not self._stopping:
                    self._condition.wait(self.poll_s)
                if self._stopping:
                    return
                idle = not self._pending and not self.versions.request_path.exists()
                if (
                    idle
                    and self.idle_stop_s is not None
                    and time.monotonic() - idle_since >= self.idle_stop_s
                ):
                    logger.debug("worker of project %s: idle, its thread stops", self.project)
                    return
            self._take_admin_request()
            try:
                if not self._pending and self.retrain_due():
                    self.request_retrain("every_n_labels")
            except Exception:  # the label store failing: logged, and the next notice or poll checks again
                logger.exception(
                    "worker of project %s: checking whether a retrain is due failed", self.project
                )
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
                    tune=self.tune, embed_fn=self.embed_fn,
                )  # fmt: skip
                self.results.append(result)
            except Exception:
                logger.exception("worker of project %s: retrain crashed", self.project)
            finally:
                self._running = False
                idle_since = time.monotonic()


def current_version(versions: VersionStore) -> ModelVersion:
    """The version to serve now (``/setup``'s model_version and ``/predict``)."""
    return versions.serving()


def request_retrain_file(versions: VersionStore, note: str = "") -> Path:
    """Ask the project's workers (in any process) for a retrain: writes ``retrain.request``; returns its path."""
    versions.request_path.write_text(note or f"lwc retrain at {utc_now().isoformat()}")
    return versions.request_path
