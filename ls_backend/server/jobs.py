"""Pre-annotation jobs: a whole Label Studio project predicted in the background, and kept current after every
promotion or rollback (docs/server.md, "Pre-annotating a project").

Label Studio asks a backend for predictions synchronously and waits ``ML_TIMEOUT_PREDICT`` (100 s): a project of
a few thousand tasks cannot be pre-annotated that way. A job lists the project's tasks through the Label Studio
adapter (:class:`ls_backend.labelstudio.LabelStudioProject`, paginated), plans which still need a prediction of
the serving version (:func:`ls_backend.loop.jobs.plan_tasks`), runs the staged cascade over them in batches, and
creates the predictions in bulk (one request per batch).

- **Nothing twice.** Label Studio is the truth of what is done: a restarted job lists the project again. A create
  request that failed in a way that may have reached Label Studio (a timeout, a 5xx) is followed by a look at what
  the batch's tasks hold before it is sent again.
- **Nothing lost.** Label Studio being slow or down pauses the job (``paused``, with the reason and the next try
  in its note) and retries with exponential backoff, for as long as it takes; no task is dropped.
- **Bounded.** One job per project (the job store's unique index). A job's LLM calls take each LLM's lock as a
  background caller, one LLM batch at a time, so an interactive ``/predict`` waits for at most one batch
  (:class:`ls_backend.server.predictor.PriorityLock`). LLM outputs come from the score cache.

:func:`run_job` is the job; it runs wherever it is handed a :class:`JobContext`: in the server's threads
(:class:`JobManager`, the default, state in the label store) or on RQ workers (:mod:`ls_backend.server.rq_jobs`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ls_backend.labelstudio import LabelSpec, ListedTask, error_text, is_transient
from ls_backend.loop.jobs import Job, JobPlan, JobStore, plan_tasks
from ls_backend.server.predictor import Prediction, label_studio_entry

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50
"""Tasks per batch: predicted together (the cascade's own LLM batches are smaller) and created in one request."""
SYSTEMATIC_FAILURES = 3


class JobStopped(Exception):
    """The job was cancelled, or the process running it is stopping (it resumes at the next start)."""

    def __init__(self, cancelled: bool) -> None:
        super().__init__("cancelled" if cancelled else "stopping")
        self.cancelled = cancelled


class LabelStudioRefused(RuntimeError):
    """Label Studio answered a request with a 4xx that retrying cannot change (the job fails with it)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first_s``, doubling, at most ``max_s``."""

    first_s: float = 1.0
    max_s: float = 60.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


class ProjectPredictions(Protocol):
    """The five calls a job makes to its Label Studio project (:class:`~ls_backend.labelstudio.LabelStudioProject`;
    tests pass an in-memory one that fails on cue)."""

    def list_tasks(self, data_key: str) -> list[ListedTask]: ...

    def create_predictions(self, items: Sequence[Mapping[str, Any]]) -> int: ...

    def create_prediction(self, item: Mapping[str, Any]) -> None: ...

    def predictions_of(self, task_ids: Sequence[int], version: str) -> dict[int, list[int]]: ...

    def delete_prediction(self, prediction_id: int) -> bool: ...


class JobState(Protocol):
    """Where one job's state lives: the label store (:class:`StoredJobState`) or an RQ job's meta."""

    def start_attempt(self) -> Job: ...

    def get(self) -> Job: ...

    def update(self, **values: Any) -> Job: ...

    def set_plan(self, target_version: str, plan: JobPlan, retarget: bool) -> Job: ...

    def replaced(self) -> dict[int, list[int]] | None: ...

    def record_batch(self, done: Sequence[int], failed: Sequence[int], **counts: Any) -> Job: ...


@dataclass
class StoredJobState:
    """A job's state in the :class:`~ls_backend.loop.jobs.JobStore` (the label store's file)."""

    store: JobStore
    job_id: int

    def start_attempt(self) -> Job:
        return self.store.start_attempt(self.job_id)

    def get(self) -> Job:
        job = self.store.get(self.job_id)
        if job is None:
            raise KeyError(f"no job {self.job_id}")
        return job

    def update(self, **values: Any) -> Job:
        return self.store.update(self.job_id, **values)

    def set_plan(self, target_version: str, plan: JobPlan, retarget: bool) -> Job:
        return self.store.set_plan(self.job_id, target_version, plan, retarget)

    def replaced(self) -> dict[int, list[int]] | None:
        return self.store.replaced(self.job_id)

    def record_batch(self, done: Sequence[int], failed: Sequence[int], **counts: Any) -> Job:
        return self.store.record_batch(self.job_id, done, failed, **counts)


AfterBatch = Callable[[list[int], list[str], list[float | None], str, list[str | None]], object]
"""``(task ids, texts, served scores, model version, choices)`` of a created batch (the label store's routing)."""
OnPredicted = Callable[[list[int], list[Prediction]], object]
"""``(task ids, predictions)`` of a predicted batch, created or not (the server's ``/explain`` and ``/metrics``)."""


@dataclass
class JobContext:
    """What a job needs, wherever it runs.

    Attributes:
        state: the job's state.
        label_studio: the project's Label Studio calls.
        label: the project's Choices/Text pair.
        predict: the cascade over a batch of texts, as a background caller (one :class:`Prediction` per text).
        version: the model version that serves the project now (checked before each batch: a promotion or
            rollback while the job runs retargets it).
        batch_size: tasks per batch.
        after_batch: what to do with a created batch besides Label Studio (None: nothing).
        on_predicted: what to do with each batch's predictions once the batch is through (None: nothing): the
            embedded runner books them in ``/explain`` and ``/metrics``, as ``/predict`` does its own.
        backoff: the waits between tries while Label Studio cannot be reached.
        stopping: set when the process running the job stops (the job then pauses, to resume at the next start).
    """

    state: JobState
    label_studio: ProjectPredictions
    label: LabelSpec
    predict: Callable[[list[str]], list[Prediction]]
    version: Callable[[], str]
    batch_size: int = DEFAULT_BATCH_SIZE
    after_batch: AfterBatch | None = None
    on_predicted: OnPredicted | None = None
    backoff: Backoff = field(default_factory=Backoff)
    stopping: threading.Event = field(default_factory=threading.Event)


def run_job(context: JobContext) -> Job:
    """Run (or resume) one job to its end: ``done``, ``cancelled`` or ``failed``; ``paused`` when the process
    stops first. Never raises for what Label Studio or the model does; the job's state says what happened."""
    return _Run(context).run()


class _Run:
    def __init__(self, context: JobContext) -> None:
        self.c = context
        self.paused = False

    def run(self) -> Job:
        state = self.c.state
        job = state.start_attempt()
        try:
            self._check_stop()
            while not self._one_pass():
                job = state.get()
            job = state.get()
            note = (
                f"{job.done} predicted, {job.skipped} skipped, {job.failed} failed; {job.llm_calls} LLM calls, "
                f"{job.cached} outputs from the score cache"
            )
            job = state.update(status="done", note=note)
            logger.info("job %s of project %s done: %s", job.id, job.project, note)
        except JobStopped as stop:
            if stop.cancelled:
                job = state.update(status="cancelled", note="cancelled")
            else:
                job = state.update(
                    status="paused", note="the backend stopped; the job resumes at its next start"
                )
            logger.info("job %s: %s", job.id, job.note)
        except Exception as e:
            logger.exception("job %s failed", job.id)
            job = state.update(status="failed", error=f"{type(e).__name__}: {e}")
        return job

    # ---- one pass over the project for one target version; False when the version changed meanwhile

    def _one_pass(self) -> bool:
        state, c = self.c.state, self.c
        target = c.version()
        before = state.get()
        listed = self._retrying(
            "listing the project's tasks", lambda: c.label_studio.list_tasks(c.label.data_key)
        )
        retarget = before.target_version is not None and before.target_version != target
        replaced = None if retarget or before.target_version is None else state.replaced()
        plan = plan_tasks(listed, target, before.mode, replaced)
        job = state.set_plan(target, plan, retarget)
        if retarget:
            logger.info("job %s: the serving version is now %s; re-planning", job.id, target)
        logger.info(
            "job %s of project %s: %d tasks, %d to predict with %s (%d already done, %d unreadable)",
            job.id, job.project, len(listed), len(plan.to_predict), target, len(plan.done), len(plan.unreadable),
        )  # fmt: skip
        if plan.stale:
            deleted = self._delete(plan.stale)
            state.record_batch([], [], deleted=deleted)
        texts = {t.task_id: t.text for t in listed}
        self._route_existing(
            target, [t for t in listed if t.task_id in set(plan.done) and t.text is not None]
        )
        for start in range(0, len(plan.to_predict), c.batch_size):
            self._check_stop()
            if c.version() != target:
                return False
            batch = plan.to_predict[start : start + c.batch_size]
            if not self._batch(target, batch, [str(texts[t]) for t in batch], plan.replaces):
                return False
        return True

    def _batch(
        self, target: str, task_ids: list[int], texts: list[str], replaces: Mapping[int, list[int]]
    ) -> bool:
        """Predict and create one batch; False (nothing created) when the model answered with another version
        than the target (a promotion between the version check and the prediction)."""
        c = self.c
        started = time.perf_counter()
        predictions = self._predict(texts)
        llm_seconds = time.perf_counter() - started
        if any(p.choice is not None and p.model_version != target for p in predictions):
            return False
        items, failed, kept = [], [], []
        llm_calls = cached = 0
        llm_cost = 0.0
        for task_id, text, prediction in zip(task_ids, texts, predictions, strict=True):
            called = prediction.llm_called or ()
            llm_calls += sum(called)
            cached += len(called) - sum(called)
            costs = prediction.llm_costs or ()
            llm_cost += sum(c for c, fresh in zip(costs, called, strict=False) if fresh)
            entry, problem = label_studio_entry(c.label, prediction)
            if entry is None:
                logger.warning("job: task %s: no prediction: %s", task_id, problem)
                failed.append(task_id)
                continue
            items.append({"task": task_id, **entry})
            kept.append((task_id, text, prediction))
        started = time.perf_counter()
        refused = self._create(target, items, replaces)
        deleted = 0
        created = [t for t in (i["task"] for i in items) if t not in refused]
        old = [p for t in created for p in replaces.get(t, [])]
        if old:
            deleted = self._delete(old)
        ls_seconds = time.perf_counter() - started
        c.state.record_batch(
            created, [*failed, *refused], llm_calls=llm_calls, cached=cached, deleted=deleted,
            llm_seconds=llm_seconds, label_studio_seconds=ls_seconds, llm_cost=llm_cost,
        )  # fmt: skip
        if c.on_predicted is not None:
            try:
                c.on_predicted(list(task_ids), list(predictions))
            except Exception:  # bookkeeping: the predictions are in Label Studio
                logger.exception("job: booking a batch of predictions in /explain and /metrics failed")
        if c.after_batch is not None and created:
            done = {t for t in created}
            rows = [(t, text, p) for t, text, p in kept if t in done]
            try:
                c.after_batch(
                    [t for t, _, _ in rows], [text for _, text, _ in rows], [p.score for _, _, p in rows], target,
                    [p.choice for _, _, p in rows],
                )  # fmt: skip
            except Exception:  # bookkeeping: the predictions are in Label Studio
                logger.exception("job: routing a batch of predictions failed")
        return True

    def _route_existing(self, target: str, tasks: list[ListedTask]) -> None:
        """Tasks that already hold a prediction of the target version go to the label store with its score, as
        the job's own do: after a rollback to a version Label Studio still has predictions of, the review bands
        and the project's model version follow it without a single new prediction."""
        if self.c.after_batch is None:
            return
        for start in range(0, len(tasks), 500):
            chunk = tasks[start : start + 500]
            try:
                self.c.after_batch(
                    [t.task_id for t in chunk], [str(t.text) for t in chunk], [t.score_of(target) for t in chunk],
                    target, [None] * len(chunk),
                )  # fmt: skip
            except Exception:  # bookkeeping, as for the job's own batches
                logger.exception("job: routing the tasks already predicted failed")

    def _predict(self, texts: list[str]) -> list[Prediction]:
        """The batch's predictions; a batch that fails is retried text by text (one bad text costs the others
        nothing); a model that fails on its first texts is broken and fails the job."""
        try:
            predictions = self.c.predict(texts)
            if len(predictions) != len(texts):
                raise RuntimeError(f"{len(predictions)} predictions for {len(texts)} texts")
            return predictions
        except Exception as e:
            if len(texts) == 1:
                raise
            logger.warning("job: a batch of %d texts failed (%s); predicting text by text", len(texts), e)
        predictions = []
        successes = 0
        for i, text in enumerate(texts):
            try:
                (single,) = self.c.predict([text])
                successes += 1
                predictions.append(single)
            except Exception as e:
                if successes == 0 and i + 1 >= SYSTEMATIC_FAILURES:
                    raise
                predictions.append(
                    Prediction(None, None, "", reason=f"the model failed: {type(e).__name__}: {e}")
                )
        return predictions

    def _create(
        self, target: str, items: list[dict[str, Any]], replaces: Mapping[int, list[int]]
    ) -> set[int]:
        """Create the batch's predictions in one request; returns the tasks Label Studio refused. After a failure
        that may have reached Label Studio, only the tasks that still hold no new prediction are sent again."""
        ls = self.c.label_studio
        pending = list(items)
        delays = self.c.backoff.delays()
        while pending:  # a cancel lets the batch in hand be created (its waits between tries stop it)
            try:
                ls.create_predictions(pending)
                self._resume()
                return set()
            except Exception as e:
                if not is_transient(e):
                    return self._create_one_by_one(pending, e)
                self._pause(f"creating {len(pending)} predictions", e, next(delays))
            sent = [int(i["task"]) for i in pending]
            holds = self._retrying(
                "reading the batch's predictions", functools.partial(ls.predictions_of, sent, target)
            )
            pending = [
                i for i in pending if not set(holds.get(i["task"], [])) - set(replaces.get(i["task"], []))
            ]
        return set()

    def _create_one_by_one(self, items: list[dict[str, Any]], error: BaseException) -> set[int]:
        """Label Studio refused the batch (e.g. a task deleted meanwhile): each prediction alone, so one refused
        task costs the others nothing."""
        logger.warning(
            "job: Label Studio refused a batch of %d predictions (%s); one by one", len(items), error
        )
        refused: set[int] = set()
        for item in items:
            try:
                self._retrying("creating a prediction", functools.partial(self._create_single, item))
            except LabelStudioRefused as e:
                logger.warning("job: task %s: Label Studio refused its prediction: %s", item["task"], e)
                refused.add(int(item["task"]))
        return refused

    def _create_single(self, item: Mapping[str, Any]) -> None:
        try:
            self.c.label_studio.create_prediction(item)
        except Exception as e:
            if is_transient(e):
                raise
            raise LabelStudioRefused(error_text(e)) from e

    def _delete(self, prediction_ids: Sequence[int]) -> int:
        deleted = 0
        for prediction_id in prediction_ids:
            self._check_stop()
            call = functools.partial(self.c.label_studio.delete_prediction, prediction_id)
            deleted += self._retrying("deleting a replaced prediction", call)
        return deleted

    # ---- waiting, pausing, stopping

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` until it succeeds, pausing the job between tries while Label Studio cannot be reached; a
        final refusal (a 4xx) raises :class:`LabelStudioRefused`."""
        delays = self.c.backoff.delays()
        while True:
            self._check_stop()
            try:
                result = call()
            except LabelStudioRefused:
                raise
            except Exception as e:
                if not is_transient(e):
                    raise LabelStudioRefused(f"{what}: {error_text(e)}") from e
                self._pause(what, e, next(delays))
                continue
            self._resume()
            return result

    def _pause(self, what: str, error: BaseException, delay: float) -> None:
        note = f"paused: {what} failed ({type(error).__name__}: {str(error)[:200]}); next try in {delay:g} s"
        logger.warning("job: %s", note)
        self.c.state.update(status="paused", note=note)
        self.paused = True
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self._check_stop()
            self.c.stopping.wait(min(0.5, max(deadline - time.monotonic(), 0.0)))

    def _resume(self) -> None:
        if self.paused:
            self.c.state.update(status="running", note="resumed")
            self.paused = False

    def _check_stop(self) -> None:
        if self.c.stopping.is_set():
            raise JobStopped(cancelled=False)
        if self.c.state.get().cancel_requested:
            raise JobStopped(cancelled=True)


ContextFactory = Callable[[Job, threading.Event], "JobContext | None"]
"""Builds a job's context in this process (None: the project is unknown here or has no Label Studio access)."""


class JobManager:
    """The embedded job runner: jobs in threads of the server process, their state in the label store.

    A job's thread holds an exclusive ``flock`` on ``<lock_dir(project)>/job.lock`` while it runs, so two server
    processes sharing a model directory never run one project's job at once, and a job whose process died (the
    OS dropped its lock) is resumed by :meth:`resume` at the next start.

    Args:
        store: the :class:`~ls_backend.loop.jobs.JobStore`.
        context_for: makes a job's :class:`JobContext` in this process.
        lock_dir: the folder of a project's job lock.
    """

    def __init__(self, store: Any, context_for: ContextFactory, lock_dir: Callable[[int], Any]) -> None:
        self.store = store
        self.context_for = context_for
        self.lock_dir = lock_dir
        self.stopping = threading.Event()
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    def submit(
        self, project: int, kind: str = "prelabel", mode: str = "missing", trigger: str = "api"
    ) -> Job:
        """Create a job and start it; :class:`~ls_backend.loop.jobs.JobConflict` when one is active."""
        job: Job = self.store.create(project, kind, mode, trigger)
        self.start(job)
        return job

    def start(self, job: Job) -> bool:
        """Run ``job`` in a thread of this process (False when a thread of it runs here already)."""
        with self._lock:
            running = self._threads.get(job.id)
            if running is not None and running.is_alive():
                return False
            thread = threading.Thread(target=self._run, args=(job.id,), name=f"lwc-job-{job.id}", daemon=True)
            self._threads[job.id] = thread
        thread.start()
        return True

    def _run(self, job_id: int) -> None:
        from ls_backend.loop.trainer import retrain_lock

        job = self.store.get(job_id)
        if job is None or not job.active:
            return
        path = self.lock_dir(job.project) / "job.lock"
        with retrain_lock(path, timeout_s=0.0) as acquired:
            if not acquired:
                logger.info("job %s: another process runs it (%s is held)", job_id, path)
                return
            job = self.store.get(job_id)
            if job is None or not job.active:
                return
            try:
                context = self.context_for(job, self.stopping)
            except Exception as e:
                logger.exception("job %s: cannot prepare it", job_id)
                self.store.update(job_id, status="failed", error=f"{type(e).__name__}: {e}")
                return
            if context is None:
                self.store.update(job_id, status="paused", note="the project is not known to this server yet")
                return
            run_job(context)

    def resume(self, project: int | None = None) -> list[int]:
        """Start the active jobs of the store (of one project, or all) that no process runs (after a restart or a
        crash)."""
        started = []
        for job in self.store.jobs(project, active_only=True, limit=10_000):
            if job.backend == "embedded" and self.start(job):
                started.append(job.id)
        if started:
            logger.info("resuming jobs %s", started)
        return started

    def cancel(self, job_id: int) -> Job:
        job: Job = self.store.request_cancel(job_id)
        return job

    def wait(self, job_id: int, timeout: float | None = None) -> Job | None:
        with self._lock:
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        job: Job | None = self.store.get(job_id)
        return job

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every job's thread after its current batch (they stay active in the store: resumed at start)."""
        self.stopping.set()
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
