"""The learning loop inside the server (docs/learning-loop.md): durable labels from webhooks, routing to humans,
calibration samples, background retrains and the version that serves each project.

- ``POST /webhook`` -> :meth:`LearningLoop.record_webhook`: the event is stored in the label store (SQLite, WAL,
  fsynced) before the server answers; anything slower (catch-up from Label Studio, deciding on a retrain) runs in
  the loop's background thread, so the answer stays far under Label Studio's 1 s webhook timeout.
- One :class:`~ls_backend.loop.Worker` per project (created when the project is registered: by /setup, by the
  first /predict with tasks, or at start for projects this model directory knows; at most ``limits.max_projects``
  of them); its thread stops after ``loop.idle_stop_s`` with nothing to do and starts again on demand; retrains
  of a project exclude each other across server processes through the version store's file lock, and tune their
  bin edges in a separate process (``loop.tuning_process``) so that the request threads keep the CPU. Its ``score_fn`` asks the same LLMs through the same SQLite
  score cache as the predictor, with the same prompts, so labels of predicted tasks cost no LLM call.
- :meth:`LearningLoop.model_source` is the predictor's ``model_source``: a project is served by its version
  store's serving version once a retrain promoted one (or an admin rolled back to one); before that, and after a
  rollback to an ``initial`` version, by the out-of-task model, which is exactly what the ``initial`` version holds
  (:meth:`ProjectLoop.sync_initial` saves the predictor's out-of-task :class:`ServingModel`; one source of truth).
- After each /predict: the texts and served scores are stored, tasks scoring under the project's
  ``loop.review_threshold`` are marked for ``review``; through label-studio-sdk (``LABEL_STUDIO_URL`` and
  ``LABEL_STUDIO_API_KEY``, else the token /setup carries) the project gets the Data Manager views "Needs review"
  and "Calibration sample" and uncertainty sampling.
- Catch-up from Label Studio's API (every annotation of the project) at start and on START_TRAINING; Label Studio
  being down is logged and the catch-up is tried again ``loop.catch_up_retry_s`` later.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.files import atomic_write_text
from ls_backend.labelstudio import (
    CALIBRATION_VIEW,
    REVIEW_VIEW,
    UNCERTAINTY_SAMPLING,
    ClientFactory,
    LabelStudioAccess,
    LabelStudioConnector,
    LabelStudioProject,
    error_text,
    parse_label_config,
    review_view_filters,
    task_id_filters,
)
from ls_backend.loop import (
    EventOutcome,
    LabelingConfig,
    LabelStore,
    ModelVersion,
    Thresholds,
    VersionError,
    VersionStore,
    Worker,
    assign_bands,
    band_counts,
    draw_calibration_sample,
    retrain_lock,
)
from ls_backend.loop.catch_up import catch_up_from_label_studio
from ls_backend.loop.jobs import Job, JobStore
from ls_backend.loop.status import loop_status
from ls_backend.loop.tuning import tune_in_subprocess
from ls_backend.server.config import BackendConfig
from ls_backend.server.jobs import JOB_METRIC_HELP, JobContext, JobManager, StoredJobState, job_metrics
from ls_backend.server.predictor import Prediction, ProjectSetup

if TYPE_CHECKING:
    from ls_backend.server.predictor import CascadePredictor

logger = logging.getLogger(__name__)

LABELS_DB = "labels.db"
PROJECT_FILE = "project.json"


class ProjectLimitError(RuntimeError):
    """A new project would exceed ``limits.max_projects`` (the server answers 503)."""


@dataclass
class ProjectLoop:
    """The learning loop of one Label Studio project in this server process."""

    number: int
    setup: ProjectSetup
    versions: VersionStore
    worker: Worker
    access: LabelStudioAccess | None = None
    label_studio_ready: tuple[float, bool, bool] | None = None  # (review threshold, views, sampling) applied
    project_model_version: str | None = None  # the model version set as the project's in Label Studio
    initial_synced: str | None = None
    catch_up_at: float = math.inf  # time.monotonic() when a pending catch-up is due (inf: none pending)
    # the serving pointer and the name it serves under, as last seen (a change by a promotion or rollback
    # starts a refresh job)
    serving_seen: tuple[str | None, str | None] | None = None
    catch_up_without_access: bool = False  # a catch-up found no Label Studio access (said once)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def thresholds(self) -> Thresholds:
        settings = self.setup.config.learning
        return Thresholds(settings.review_threshold, settings.auto_accept_threshold)


class LearningLoop:
    """Every project's learning loop in one server process (see the module docstring).

    Args:
        predictor: the server's cascade predictor (its LLMs, prompts, score cache and out-of-task models).
        config: the server's configuration (``model_dir``: where labels and versions live).
        access: Label Studio's API for catch-ups, views and sampling (None: only what /setup carries).
        client_factory: makes a label-studio-sdk client from an access (default: the adapter's ``connect``;
            tests pass one that returns a fake client).
    """

    def __init__(
        self,
        predictor: CascadePredictor,
        config: BackendConfig,
        access: LabelStudioAccess | None = None,
        client_factory: ClientFactory | None = None,
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.label_studio_api = LabelStudioConnector(access, client_factory)
        self.model_dir = config.resolved_model_dir()
        limits = config.limits
        self.max_projects = limits.max_projects
        self.store = LabelStore(
            self.model_dir / LABELS_DB,
            max_text_chars=limits.max_stored_text_chars,
            max_event_bytes=limits.max_stored_event_bytes,
            max_json_depth=limits.max_json_depth,
        )
        self._projects: dict[int, ProjectLoop] = {}
        self._lock = threading.Lock()
        # whether the server is answering a request now (the app sets it): a retrain's tuning process pauses then
        self.server_busy: Callable[[], bool] | None = None
        # the server's bookkeeping of a job's predictions, (project, task ids, predictions): /explain and /metrics
        self.on_job_predictions: Callable[[int, list[int], list[Prediction]], object] | None = None
        self._changed: set[int] = set()  # projects whose labels changed since the last retrain-due check
        self._jobs: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        # pre-annotation jobs (lwc prelabel, refresh after a promotion): their state in the label store's file
        self.job_store = JobStore(self.model_dir / LABELS_DB)
        self.jobs = JobManager(self.job_store, self._job_context, self._project_dir)

    # ---- life cycle

    def start(self) -> LearningLoop:
        """Start the background thread, and the workers and catch-ups of the projects the model dir knows."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lwc-learning-loop", daemon=True)
            self._thread.start()
        files = sorted(self.model_dir.glob(f"project-*/{PROJECT_FILE}"), key=lambda p: -p.stat().st_mtime)
        for path in files:  # the most recently set up first, should there be more than max_projects
            try:
                loop = self._restore(path)
            except ProjectLimitError:
                logger.warning(
                    "%d projects in %s; restored the %d most recent (limits.max_projects)",
                    len(files),
                    self.model_dir,
                    self.max_projects,
                )
                break
            except (
                Exception
            ) as e:  # a bad file costs that project's loop until its next /setup, not the server
                logger.warning("cannot restore the learning loop from %s: %s", path, e)
                continue
            self.schedule_catch_up(loop)
        self.jobs.resume()  # jobs a stop or a crash interrupted go on where Label Studio says they are
        return self

    def stop(self) -> None:
        self.jobs.stop()
        self._jobs.put(None)
        with self._lock:
            loops = list(self._projects.values())
        for loop in loops:
            loop.worker.stop(timeout=5)

    def _run(self) -> None:
        # the periodic checks run once a second even while jobs keep coming (a pre-annotation job hands the loop
        # one per batch): a due catch-up or a promotion must not wait for a quiet second
        last_periodic = time.monotonic()
        while True:
            try:
                job: Callable[[], object] | None = self._jobs.get(timeout=1.0)
            except queue.Empty:
                job = self._periodic
            if job is None:
                return
            if job is not self._periodic and time.monotonic() - last_periodic >= 1.0:
                self._safely(self._periodic)
                last_periodic = time.monotonic()
            self._safely(job)
            if job is self._periodic:
                last_periodic = time.monotonic()

    @staticmethod
    def _safely(job: Callable[[], object]) -> None:
        try:
            job()
        except Exception:
            logger.exception("learning loop: a background job failed")

    def _periodic(self) -> None:
        """At least once a second: due catch-ups, idle-stopped workers an admin asked for a retrain, promotions
        to refresh, the state of RQ jobs."""
        self._due_catch_ups()
        with self._lock:
            loops = list(self._projects.values())
        for loop in loops:
            loop.worker.wake()
            try:
                self.refresh_if_promoted(loop)
            except Exception:
                logger.exception("project %s: checking for a promotion failed", loop.number)
        self.sync_jobs()

    def submit(self, job: Callable[[], object]) -> None:
        """Run ``job`` in the loop's background thread (one job at a time, in order)."""
        self._jobs.put(job)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the background jobs submitted so far are done (tests)."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    # ---- projects

    def project_numbers(self) -> list[int]:
        with self._lock:
            return sorted(self._projects)

    def get(self, number: int) -> ProjectLoop | None:
        with self._lock:
            return self._projects.get(number)

    def register(self, setup: ProjectSetup, access: LabelStudioAccess | None = None) -> ProjectLoop | None:
        """The project's loop, created (worker started) on first sight; remembers the latest setup on disk so that
        a restarted server knows the project. None when the setup has no numeric project id;
        :class:`ProjectLimitError` when the project is new and ``limits.max_projects`` are registered."""
        number = setup.ls_project
        if number is None:
            return None
        with self._lock:
            loop = self._projects.get(number)
            if loop is None:
                if len(self._projects) >= self.max_projects:
                    raise ProjectLimitError(
                        f"this backend already serves {len(self._projects)} projects (limits.max_projects); "
                        f"project {number} is not registered"
                    )
                loop = self._new_loop(number, setup)
                self._projects[number] = loop
                created = True
            else:
                created = False
        with loop.lock:
            before = loop.thresholds
            loop.setup = setup
            loop.access = access or loop.access
            loop.worker.config = setup.config.learning.loop_config()
        self._save_project_file(loop)
        if not created and loop.thresholds != before:
            self.submit(lambda: self.reroute(loop))
        if loop.label_studio_ready != self._label_studio_wanted(loop):
            self.submit(lambda: self.prepare_label_studio(loop))
        if created:
            label = setup.label
            self.store.set_config(
                number, LabelingConfig(tuple(label.choices), label.data_key, label.from_name)
            )
            loop.serving_seen = self._serving_seen(loop)
            loop.worker.start()
            self.jobs.resume(number)
        return loop

    def _new_loop(self, number: int, setup: ProjectSetup) -> ProjectLoop:
        versions = VersionStore(self.model_dir, number)
        loop_holder: list[ProjectLoop] = []
        settings = setup.config.learning
        worker = Worker(
            number,
            self.store,
            versions,
            lambda k, texts: self.score(loop_holder[0], k, texts),
            settings.loop_config(),
            poll_s=settings.poll_s,
            before_retrain=lambda: self.sync_initial(loop_holder[0]),
            idle_stop_s=settings.idle_stop_s,
            tune=functools.partial(tune_in_subprocess, pause_while=self._busy)
            if settings.tuning_process
            else None,
            embed_fn=lambda texts: self.predictor.embed_for_retrain(loop_holder[0].setup.config, texts),
        )
        loop = ProjectLoop(number, setup, versions, worker)
        loop_holder.append(loop)
        return loop

    def _busy(self) -> bool:
        return self.server_busy is not None and self.server_busy()

    def _save_project_file(self, loop: ProjectLoop) -> None:
        setup = loop.setup
        record = {
            "project": setup.project_id,
            "label_config": setup.label_config_xml,
            "extra_params": setup.extra_params,
            "question": setup.question,
            "question_source": setup.question_source,
            "review_threshold": loop.thresholds.review,
            "auto_accept_threshold": loop.thresholds.auto_accept,
            "loop": loop.worker.config.to_dict(),
        }
        path = loop.versions.directory / PROJECT_FILE
        text = json.dumps(record, indent=1)
        with contextlib.suppress(OSError):
            if path.exists() and path.read_text(encoding="utf-8") == text:
                return
        try:
            atomic_write_text(path, text)
        except OSError as e:
            logger.warning("project %s: cannot save %s: %s", loop.number, path, e)

    def _restore(self, path: Path) -> ProjectLoop:
        record = json.loads(path.read_text(encoding="utf-8"))
        label_config = str(record["label_config"])
        extra = dict(record.get("extra_params") or {})
        config = self.config.merged(extra)
        question = config.question or str(record["question"])
        source = "config" if config.question else str(record.get("question_source", "default"))
        setup = ProjectSetup(
            str(record["project"]),
            parse_label_config(label_config),
            config,
            question,
            source,
            label_config_xml=label_config,
            extra_params=extra,
        )
        loop = self.register(setup)
        if loop is None:
            raise ValueError(f"project id {record['project']!r} is not numeric")
        logger.info("learning loop of project %s restored from %s", loop.number, path)
        return loop

    # ---- serving

    def model_source(self, setup: ProjectSetup) -> ModelVersion | None:
        """The predictor's ``model_source``: the promoted (or rolled back to) version serving the project, None
        while its ``initial`` (out-of-task) version serves, since the predictor serves that one itself."""
        number = setup.ls_project
        loop = self.get(number) if number is not None else None
        if loop is None:
            return None
        try:
            version = loop.versions.serving()
        except VersionError:
            return None
        return None if version.status == "initial" else version

    def served_name(self, version: ModelVersion) -> str:
        """The model version predictions carry: an ``initial`` version serves under its out-of-task name."""
        if version.status == "initial" and version.config.get("oot_version"):
            return str(version.config["oot_version"])
        return version.name

    def version_names(self, number: int) -> list[str]:
        """The project's versions that served or may serve (not rejected), as predictions name them."""
        loop = self.get(number)
        if loop is None:
            return []
        names = []
        serving = loop.versions.serving_name()
        for name in loop.versions.names():
            try:
                version = loop.versions.load(name)
            except VersionError:
                continue
            if version.status != "rejected" or name == serving:
                names.append(self.served_name(version))
        return names

    def sync_initial(self, loop: ProjectLoop) -> ModelVersion | None:
        """Make the project's ``initial`` version the predictor's out-of-task model (saved when there is none, or
        when the initial one serving was made for another out-of-task model, e.g. before the description came)."""
        oot = self.predictor.oot_model(loop.setup)
        if loop.initial_synced == oot.version:
            return None
        with retrain_lock(loop.versions.lock_path, timeout_s=60.0) as acquired:
            if not acquired:
                return None
            serving: ModelVersion | None
            try:
                serving = loop.versions.serving()
            except VersionError:
                serving = None
            if serving is not None and (
                serving.status != "initial" or serving.config.get("oot_version") == oot.version
            ):
                loop.initial_synced = oot.version
                return None
            version = loop.versions.save(
                oot.model,
                status="initial",
                trigger="initial",
                config={"oot_version": oot.version, "oot_kind": oot.kind, "notes": oot.notes},
                labels={"n_labels": 0, "by_source": {}},
            )
            loop.versions.promote(version.name, action="initial", note=oot.version)
            loop.initial_synced = oot.version
            logger.info("project %s: initial version %s is %s", loop.number, version.name, oot.version)
            return version

    def score(self, loop: ProjectLoop, k: int, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trainer's ``score_fn``: LLM k's answers, class logits and costs for these texts, through the
        predictor's score cache with the project's prompts (what /predict asked costs nothing again)."""
        setup = loop.setup
        slots = self.predictor.slots(setup.config)
        prompt = self.predictor.prompt(setup, slots[k])
        cache = self.predictor.score_cache(setup.config)
        batch_size = setup.config.cascade_settings.batch_size
        answers, logits, costs, _ = self.predictor.score_texts(slots[k], prompt, texts, cache, batch_size)
        return answers, logits, costs

    # ---- after /predict: texts, scores, review marks, Label Studio's views

    def after_predict(
        self,
        setup: ProjectSetup,
        task_ids: Sequence[int],
        texts: Sequence[str],
        scores: Sequence[float | None],
        model_version: str,
        choices: Sequence[str | None] | None = None,
    ) -> dict[str, int]:
        """Store the predicted tasks' texts and scores, mark the review band, and (when ``auto_accept_threshold``
        is set) annotate the auto-accept band in Label Studio in the background; returns the batch's band counts.
        ``choices``: the predicted class of each task (needed for auto-accept)."""
        if not task_ids:
            return {}
        loop = self.register(setup)
        if loop is None:
            return {}
        number = loop.number
        self.store.set_texts(number, dict(zip(task_ids, texts, strict=True)))
        self.store.record_predictions(number, task_ids, scores, model_version)
        bands = assign_bands(np.array(scores, dtype=object), loop.thresholds)
        review = [t for t, b in zip(task_ids, bands, strict=True) if b == "review"]
        if review:
            self.store.mark_requests(number, review, "review", model_version)
        self.submit(lambda: self._after_predict_background(loop, model_version))
        if choices is not None and loop.thresholds.auto_accept is not None:
            accepted = [
                (int(t), c)
                for t, c, b in zip(task_ids, choices, bands, strict=True)
                if b == "auto_accept" and c is not None
            ]
            if accepted:
                self.submit(lambda: self.auto_accept(loop, accepted, model_version))
        return band_counts(bands)

    def auto_accept(self, loop: ProjectLoop, accepted: Sequence[tuple[int, str]], model_version: str) -> int:
        """Annotate confidently predicted tasks with their prediction through label-studio-sdk, and record each
        annotation as the backend's own (source ``auto``: never trained on). Tasks with a label are skipped."""
        from ls_backend.loop.events import parse_timestamp_us

        label_studio = self.label_studio(loop)
        if label_studio is None:
            logger.warning("project %s: auto-accept needs Label Studio access", loop.number)
            return 0
        done = {int(t) for t in self.store.labels(loop.number).task_ids}
        done |= self.store.auto_annotated_tasks(loop.number)
        made = 0
        for task_id, choice in accepted:
            if task_id in done:
                continue
            try:
                created = label_studio.annotate(task_id, loop.setup.label.result(choice))
            except Exception as e:
                logger.warning("project %s: auto-accept of task %s failed: %s", loop.number, task_id, e)
                continue
            stamp = created.updated_at
            updated_at_us = parse_timestamp_us(stamp) if stamp else None
            self.store.mark_auto_annotation(
                loop.number, created.annotation_id, task_id, updated_at_us, model_version
            )
            made += 1
        if made:
            logger.info("project %s: auto-accepted %d predictions of %s", loop.number, made, model_version)
        return made

    def reroute(self, loop: ProjectLoop) -> list[int]:
        """After a threshold change: mark for review the predicted, unlabeled tasks whose latest score is now under
        the review threshold (the "Needs review" view shows them to annotators from now on)."""
        review = loop.thresholds.review
        scores = self.store.predicted_scores(loop.number, unlabeled_only=True)
        low = [t for t, score in scores.items() if score is None or score < review]
        marked = self.store.mark_requests(loop.number, low, "review") if low else []
        logger.info(
            "project %s: review threshold %g: %d more tasks to review", loop.number, review, len(marked)
        )
        return marked

    def _after_predict_background(self, loop: ProjectLoop, model_version: str) -> None:
        try:
            self.sync_initial(loop)
        except Exception:
            logger.exception("project %s: saving the initial version failed", loop.number)
        self.prepare_label_studio(loop)
        self.set_project_model_version(loop, model_version)

    def after_setup(self, setup: ProjectSetup, model_version: str) -> None:
        """At /setup: make sure Label Studio's project points at the version the backend serves (background)."""
        loop = self.get(setup.ls_project) if setup.ls_project is not None else None
        if loop is not None and loop.project_model_version != model_version:
            self.submit(lambda: self.set_project_model_version(loop, model_version, retries=0))

    def set_project_model_version(self, loop: ProjectLoop, model_version: str, retries: int = 5) -> bool:
        """Make ``model_version`` the project's model version in Label Studio: the predictions annotators see,
        and the ones Label Studio 1.23.2's ``predictions_score`` column (so the "Needs review" filter) averages
        (``annotate_predictions_score`` filters on the project's model version; with an empty one it matches no
        prediction, so the view would stay empty)."""
        if not loop.setup.config.learning.views or loop.project_model_version == model_version:
            return True
        label_studio = self.label_studio(loop)
        if label_studio is None:
            return False
        try:
            label_studio.set_model_version(model_version)
        except Exception as e:
            # Label Studio refuses a version it has neither as its ML backend's nor in stored predictions: right
            # after a /predict its predictions may not be saved yet, so try again a little later
            logger.info(
                "project %s: cannot set its model version %s yet: %s",
                loop.number,
                model_version,
                error_text(e),
            )
            if retries > 0:
                timer = threading.Timer(
                    2.0,
                    lambda: self.submit(
                        lambda: self.set_project_model_version(loop, model_version, retries - 1)
                    ),
                )
                timer.daemon = True
                timer.start()
            return False
        loop.project_model_version = model_version
        return True

    @staticmethod
    def _label_studio_wanted(loop: ProjectLoop) -> tuple[float, bool, bool]:
        settings = loop.setup.config.learning
        return (loop.thresholds.review, settings.views, settings.uncertainty_sampling)

    @property
    def access(self) -> LabelStudioAccess | None:
        """The server's Label Studio access (None: only what each project's /setup carries)."""
        return self.label_studio_api.access

    @access.setter
    def access(self, access: LabelStudioAccess | None) -> None:
        self.label_studio_api.access = access

    @property
    def client_factory(self) -> ClientFactory:
        return self.label_studio_api.client_factory

    @client_factory.setter
    def client_factory(self, factory: ClientFactory) -> None:
        self.label_studio_api.client_factory = factory

    def label_studio(self, loop: ProjectLoop) -> LabelStudioProject | None:
        return self.label_studio_api.project(loop.number, loop.access)

    def prepare_label_studio(self, loop: ProjectLoop) -> bool:
        """Create the "Needs review" view and set uncertainty sampling (once per threshold; idempotent)."""
        settings = loop.setup.config.learning
        wanted = self._label_studio_wanted(loop)
        if loop.label_studio_ready == wanted or not (settings.views or settings.uncertainty_sampling):
            return True
        label_studio = self.label_studio(loop)
        if label_studio is None:
            return False
        try:
            if settings.uncertainty_sampling:
                label_studio.use_uncertainty_sampling()
            if settings.views:
                label_studio.ensure_unfiltered_view()
                label_studio.upsert_view(REVIEW_VIEW, review_view_filters(loop.thresholds.review))
        except Exception as e:
            logger.warning("project %s: cannot set up views/sampling in Label Studio: %s", loop.number, e)
            return False
        loop.label_studio_ready = wanted
        logger.info(
            "project %s: Label Studio has the %r view (score < %g) and %s",
            loop.number,
            REVIEW_VIEW,
            loop.thresholds.review,
            UNCERTAINTY_SAMPLING if settings.uncertainty_sampling else "its own sampling",
        )
        return True

    # ---- pre-annotation jobs (ls_backend/server/jobs.py)

    def _project_dir(self, number: int) -> Path:
        loop = self.get(number)
        return loop.versions.directory if loop is not None else self.model_dir / f"project-{number}"

    def start_job(
        self, number: int, kind: str = "prelabel", mode: str = "missing", trigger: str = "api"
    ) -> Job:
        """Start a job that predicts the project's tasks in the background (``mode``: ``missing`` or ``all``).
        :class:`KeyError` for a project without /setup, :class:`~ls_backend.loop.jobs.JobConflict` (carrying the
        active job) when one runs, :class:`RuntimeError` without Label Studio access."""
        loop = self.get(number)
        if loop is None:
            raise KeyError(f"project {number} is unknown to this backend (no /setup yet)")
        if self.label_studio(loop) is None:
            raise RuntimeError(
                f"project {number}: a job needs Label Studio's API (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)"
            )
        settings = self.config.learning
        if settings.job_backend != "rq":
            return self.jobs.submit(number, kind, mode, trigger)
        from ls_backend.server import rq_jobs

        assert settings.redis_url is not None  # the config requires it with job_backend rq
        job = self.job_store.create(number, kind, mode, trigger, backend="rq")
        try:
            rq_id = rq_jobs.enqueue(settings.redis_url, job, self._rq_spec(loop, job))
        except Exception as e:
            self.job_store.update(
                job.id, status="failed", error=f"cannot enqueue it: {type(e).__name__}: {e}"
            )
            raise RuntimeError(f"project {number}: cannot enqueue the job on RQ: {e}") from e
        return self.job_store.update(job.id, external_id=rq_id)

    def _rq_spec(self, loop: ProjectLoop, job: Job) -> dict[str, Any]:
        """What an RQ worker needs to run the job: the project's setup and the serving version itself."""
        setup = loop.setup
        served = self.predictor.served(setup)
        return {
            "job": job.to_dict(),
            "project_id": setup.project_id,
            "label_config": setup.label_config_xml,
            "extra_params": dict(setup.extra_params),
            "question": setup.question,
            "question_source": setup.question_source,
            "version": {"name": served.name, "model": served.model.to_dict()},
        }

    def cancel_job(self, job_id: int) -> Job:
        """Ask a job to stop after its current batch (:class:`KeyError` for an unknown job)."""
        job = self.jobs.cancel(job_id)
        if job.backend == "rq" and job.external_id and self.config.learning.redis_url:
            from ls_backend.server import rq_jobs

            rq_jobs.request_cancel(self.config.learning.redis_url, job.external_id)
        return self.sync_job(job)

    def sync_job(self, job: Job) -> Job:
        """An RQ job's state read from Redis into the label store (the worker's progress, its end); when it ended
        done, its predicted tasks go into the label store as /predict's would. Other jobs as they are."""
        url = self.config.learning.redis_url
        if job.backend != "rq" or not job.active or not job.external_id or url is None:
            return job
        from ls_backend.server import rq_jobs

        try:
            queued = rq_jobs.read_status(url, job.external_id)
        except Exception as e:  # Redis down: the job's state waits, nothing is lost
            logger.warning("job %s: cannot read its RQ state: %s", job.id, e)
            return job
        if queued is None:
            return self.job_store.update(job.id, status="failed", error="Redis no longer has the RQ job")
        values: dict[str, Any] = {}
        if queued.job:
            for key in ("total", "done", "skipped", "failed", "llm_calls", "cached", "deleted", "llm_seconds", "llm_cost",
                        "label_studio_seconds", "attempts", "retargets", "target_version", "note", "started_at"):  # fmt: skip
                if key in queued.job:
                    values[key] = queued.job[key]
            if queued.job.get("status") in ("running", "paused"):
                values["status"] = queued.job["status"]
        if queued.rq_status == "finished" and queued.result is not None:
            self._apply_predicted(job, queued.result.get("predicted") or [])
            values["status"] = "done"
        elif queued.rq_status == "failed":
            values |= {"status": "failed", "error": queued.error}
        elif queued.rq_status in ("canceled", "stopped") or (
            queued.rq_status == "finished" and (queued.job or {}).get("status") == "cancelled"
        ):
            values["status"] = "cancelled"
        return self.job_store.update(job.id, **values) if values else job

    def _apply_predicted(self, job: Job, rows: Sequence[Sequence[Any]]) -> None:
        loop = self.get(job.project)
        if loop is None or not rows:
            return
        version = job.target_version or ""
        try:
            self.after_predict(
                loop.setup, [int(r[0]) for r in rows], [str(r[1]) for r in rows],
                [r[2] for r in rows], version, [r[3] for r in rows],
            )  # fmt: skip
        except Exception:
            logger.exception("job %s: storing its predictions in the label store failed", job.id)

    def sync_jobs(self) -> None:
        """Read every active RQ job's state (the periodic check, so a finished job is applied unasked)."""
        if self.config.learning.job_backend != "rq":
            return
        for job in self.job_store.jobs(active_only=True, limit=1000):
            self.sync_job(job)

    def _job_context(self, job: Job, stopping: threading.Event) -> JobContext | None:
        loop = self.get(job.project)
        if loop is None:
            return None
        label_studio = self.label_studio(loop)
        if label_studio is None:
            raise RuntimeError("no Label Studio access (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")

        def after_batch(ids: list[int], texts: list[str], scores: list[float | None], version: str,
                        choices: list[str | None]) -> object:  # fmt: skip
            return self.after_predict(loop.setup, ids, texts, scores, version, choices)

        hook = self.on_job_predictions
        # loop.setup is read at each call: a /setup with new extra_params applies from the next batch on
        return JobContext(
            state=StoredJobState(self.job_store, job.id),
            label_studio=label_studio,
            label=loop.setup.label,
            predict=lambda texts: self.predictor.predict(loop.setup, texts, background=True),
            version=lambda: self.predictor.model_version(loop.setup),
            batch_size=loop.setup.config.learning.job_batch_size,
            after_batch=after_batch,
            on_predicted=None if hook is None else functools.partial(hook, loop.number),
            stopping=stopping,
        )

    def _serving_seen(self, loop: ProjectLoop) -> tuple[str | None, str | None]:
        name = loop.versions.serving_name()
        served = None
        if name is not None:
            with contextlib.suppress(VersionError):
                served = self.served_name(loop.versions.load(name))
        return name, served

    def refresh_if_promoted(self, loop: ProjectLoop) -> Job | None:
        """After a promotion or rollback (by a retrain here, or ``lwc rollback`` from anywhere) changed the version
        a project serves under, re-predict its tasks with it (``loop.refresh_on_promotion``; only projects with
        predictions). A job already active retargets itself at its next batch instead."""
        seen = self._serving_seen(loop)
        before, loop.serving_seen = loop.serving_seen, seen
        if before is None or seen == before or seen[1] == before[1] or before[0] is None:
            return None
        history = loop.versions.history()
        action = history[-1].get("action") if history else None
        if action not in ("promote", "rollback") or not loop.setup.config.learning.refresh_on_promotion:
            return None
        if not self.store.predicted_scores(loop.number) and self.job_store.latest(loop.number) is None:
            return None
        if self.job_store.active(loop.number) is not None:
            return None
        try:
            job = self.start_job(loop.number, kind="refresh", mode="missing", trigger=f"{action} {seen[1]}")
        except Exception as e:
            logger.warning(
                "project %s: cannot refresh its predictions after the %s: %s", loop.number, action, e
            )
            return None
        logger.info("project %s: %s to %s; refresh job %s", loop.number, action, seen[1], job.id)
        return job

    # ---- webhooks and catch-up

    def record_webhook(self, payload: bytes | str | Mapping[str, Any]) -> EventOutcome:
        """Store the event durably (before the caller answers); what follows runs in the background."""
        outcome = self.store.record_event(payload)
        if outcome.project is None:
            return outcome
        if outcome.retrain_requested:
            self.submit(lambda: self._after_event(outcome))
        elif outcome.label_changed:
            # a burst of labels is one background job (a retrain-due check per project), not one per webhook
            with self._lock:
                first = not self._changed
                self._changed.add(outcome.project)
            if first:
                self.submit(self._notify_changed)
        return outcome

    def _notify_changed(self) -> None:
        with self._lock:
            projects, self._changed = self._changed, set()
        for number in sorted(projects):
            loop = self.get(number)
            if loop is None:
                logger.info(
                    "labels of project %s stored; the project has no /setup yet, so no retrain", number
                )
            else:
                loop.worker.notify_labels()

    def _after_event(self, outcome: EventOutcome) -> None:
        assert outcome.project is not None
        loop = self.get(outcome.project)
        if loop is None:
            logger.info(
                "webhook %s of project %s stored; the project has no /setup yet, so no retrain",
                outcome.action,
                outcome.project,
            )
            return
        if outcome.retrain_requested:
            self.catch_up(loop)
            loop.worker.request_retrain("START_TRAINING", force=True)
        else:
            loop.worker.notify_labels()

    def schedule_catch_up(self, loop: ProjectLoop) -> None:
        loop.catch_up_at = time.monotonic()
        self.submit(self._due_catch_ups)

    def _due_catch_ups(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [loop for loop in self._projects.values() if loop.catch_up_at <= now]
        for loop in due:
            self.catch_up(loop)

    def catch_up(self, loop: ProjectLoop) -> bool:
        """Apply every annotation Label Studio holds for the project; on failure, try again later."""
        label_studio = self.label_studio(loop)
        retry = loop.setup.config.learning.catch_up_retry_s
        if label_studio is None:
            # tried again later: a /setup may bring an access (its hostname and token), or the server's be set
            log = logger.info if loop.catch_up_without_access else logger.warning
            log(
                "project %s: no Label Studio access (LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY) for a catch-up yet",
                loop.number,
            )
            loop.catch_up_without_access = True
            loop.catch_up_at = time.monotonic() + retry
            return False
        label = loop.setup.label
        config = LabelingConfig(tuple(label.choices), label.data_key, label.from_name)
        result = catch_up_from_label_studio(self.store, label_studio, config)
        if result is None:
            loop.catch_up_at = time.monotonic() + retry
            return False
        loop.catch_up_at = math.inf
        if result.created or result.updated or result.deleted:
            loop.worker.notify_labels()
        return True

    # ---- admin

    def calibration_sample(self, number: int, k: int, method: str, seed: int | None = None) -> dict[str, Any]:
        """Draw ``k`` not-yet-labeled tasks by U, SE or IE (surrogate error of the cheapest LLM: its plain softmax
        score vs its out-of-task calibrated score), mark them ``calibration`` with their inclusion probabilities,
        and show every calibration task in Label Studio's "Calibration sample" view."""
        from ls_backend.confidence import softmax
        from ls_backend.sampling import SAMPLERS

        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {list(SAMPLERS)}, got {method!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        loop = self.get(number)
        if loop is None:
            raise KeyError(f"project {number} is unknown to this backend (no /setup yet)")
        texts = self.store.texts(number)
        labeled = {int(t) for t in self.store.labels(number).task_ids}
        asked = set(self.store.requested_tasks(number, "calibration"))
        pool = sorted(t for t in texts if t not in labeled and t not in asked)
        result: dict[str, Any] = {"project": number, "method": method, "pool": len(pool), "drawn": []}
        if pool:
            answers, logits, _ = self.score(loop, 0, [texts[t] for t in pool])
            rows = np.arange(len(pool))
            plain = softmax(np.asarray(logits, dtype=np.float64))[rows, answers]
            oot = self.predictor.oot_model(loop.setup)
            reference = oot.model.calibrated_probabilities(0, np.asarray(logits, dtype=np.float64))[
                rows, answers
            ]
            rng = np.random.default_rng(seed)
            draw = draw_calibration_sample(pool, plain, reference, k, method, rng)
            marked = self.store.mark_requests(
                number,
                draw.task_ids.tolist(),
                "calibration",
                oot.version,
                draw.inclusion_probabilities,
                method,
            )
            result["drawn"] = [
                {"task": int(t), "inclusion_probability": float(p), "surrogate_error": float(e)}
                for t, p, e in zip(draw.task_ids, draw.inclusion_probabilities, draw.errors, strict=True)
                if int(t) in set(marked)
            ]
        result["view"] = self._update_calibration_view(loop)
        return result

    def _update_calibration_view(self, loop: ProjectLoop) -> int | None:
        if not loop.setup.config.learning.views:
            return None
        label_studio = self.label_studio(loop)
        if label_studio is None:
            return None
        ids = self.store.requested_tasks(loop.number, "calibration")
        try:
            label_studio.ensure_unfiltered_view()
            return label_studio.upsert_view(CALIBRATION_VIEW, task_id_filters(ids))
        except Exception as e:
            logger.warning("project %s: cannot update the %r view: %s", loop.number, CALIBRATION_VIEW, e)
            return None

    def bands(self, loop: ProjectLoop) -> dict[str, int]:
        """How many predicted tasks fall in each band (by their latest served score)."""
        scores = list(self.store.predicted_scores(loop.number).values())
        return band_counts(assign_bands(np.array(scores, dtype=object), loop.thresholds))

    def status(self, number: int) -> dict[str, Any]:
        """``loop_status`` plus the routing thresholds and band counts."""
        loop = self.get(number)
        if loop is None:
            raise KeyError(f"project {number} is unknown to this backend (no /setup yet)")
        status = loop_status(number, self.store, loop.versions, loop.worker.config)
        status["thresholds"] = {"review": loop.thresholds.review, "auto_accept": loop.thresholds.auto_accept}
        status["bands"] = self.bands(loop)
        latest = self.job_store.latest(number)
        status["job"] = self.sync_job(latest).to_dict() if latest is not None else None
        if status.get("serving"):
            with contextlib.suppress(VersionError):
                status["serving"]["served_as"] = self.served_name(loop.versions.serving())
        return status

    def render_metrics(self) -> str:
        """Prometheus text for every project's loop: labels by source, band counts, the serving version and its
        held-out ACE, accuracy and cost, and versions by status."""
        with self._lock:
            loops = list(self._projects.values())
        metrics: dict[str, tuple[str, list[str]]] = {
            "lwc_labels": ("labeled tasks by why the label was asked for", []),
            "lwc_tasks_in_band": ("predicted tasks by routing band of their latest score", []),
            "lwc_serving_version_info": ("the version serving each project (value 1)", []),
            "lwc_serving_holdout_ace": ("held-out ACE of the serving version", []),
            "lwc_serving_holdout_accuracy": ("held-out accuracy of the serving version", []),
            "lwc_serving_holdout_cost_per_item": (
                "held-out cascade cost per item of the serving version",
                [],
            ),
            "lwc_model_versions": ("model versions by status (retrain history)", []),
        }
        for loop in loops:
            try:
                self._project_metrics(loop, metrics)
            except Exception:  # one project's broken files cost its own lines, not /metrics
                logger.exception("project %s: its metrics could not be read", loop.number)
        latest_jobs = []
        for loop in loops:
            try:
                job = self.job_store.latest(loop.number)
            except Exception:
                logger.exception("project %s: its job could not be read", loop.number)
                continue
            if job is not None:
                latest_jobs.append(job)
        for name, samples in job_metrics(latest_jobs).items():
            metrics[name] = (JOB_METRIC_HELP[name], samples)
        lines = []
        for name, (help_text, samples) in metrics.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
        return "\n".join(lines) + "\n"

    def _project_metrics(self, loop: ProjectLoop, metrics: dict[str, tuple[str, list[str]]]) -> None:
        """Append one project's samples to ``metrics`` (all of them, or none when one cannot be read)."""
        p = f'project="{loop.number}"'
        samples: dict[str, list[str]] = {name: [] for name in metrics}
        counts = self.store.counts(loop.number)
        for source, n in counts["labels_by_source"].items():
            samples["lwc_labels"].append(f'lwc_labels{{{p},source="{source}"}} {n}')
        for band, n in self.bands(loop).items():
            samples["lwc_tasks_in_band"].append(f'lwc_tasks_in_band{{{p},band="{band}"}} {n}')
        statuses: dict[str, int] = {}
        for entry in loop.versions.list():
            statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
        for status, n in sorted(statuses.items()):
            samples["lwc_model_versions"].append(f'lwc_model_versions{{{p},status="{status}"}} {n}')
        try:
            version = loop.versions.serving()
        except VersionError:
            version = None
        if version is not None:
            name = self.served_name(version)
            samples["lwc_serving_version_info"].append(
                f'lwc_serving_version_info{{{p},version="{name}",file="{version.name}"}} 1'
            )
            for key in ("holdout_ace", "holdout_accuracy", "holdout_cost_per_item"):
                value = version.metrics.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    samples[f"lwc_serving_{key}"].append(f"lwc_serving_{key}{{{p}}} {value!r}")
        for name, lines in samples.items():
            metrics[name][1].extend(lines)
