"""The learning loop inside the server (docs/learning-loop.md): durable labels from webhooks, routing to humans,
calibration samples, background retrains and the version that serves each project.

:class:`LearningLoop` is the face the Flask app talks to; the work is done by its parts, one job each:

- :mod:`~ls_backend.server.project_registry`: the registered projects (by /setup, by the first /predict with
  tasks, or restored at start from their ``project.json``; at most ``limits.max_projects``).
- :mod:`~ls_backend.server.background`: all background work: the task thread, its periodic and delayed tasks, and
  each project's retrain worker (``loop.idle_stop_s``: its thread stops when idle and starts again on demand).
- :mod:`~ls_backend.server.label_intake`: webhooks stored before the answer, and catch-ups from Label Studio.
- :mod:`~ls_backend.server.serving`: the version serving each project (the predictor's ``model_source``), the
  ``initial`` version, and what retrains score with.
- :mod:`~ls_backend.server.routing`: predicted tasks to review or auto-accept, and Label Studio's views, sampling
  and model version, through the Label Studio adapter (:mod:`ls_backend.labelstudio`).
- :mod:`~ls_backend.server.calibration_sample`, :mod:`~ls_backend.server.project_jobs` (pre-annotation jobs and
  the refresh after a promotion), :mod:`~ls_backend.server.project_status` (``/status``) and
  :mod:`~ls_backend.server.loop_metrics` (``/metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ls_backend.labelstudio import ClientFactory, LabelStudioAccess, LabelStudioConnector
from ls_backend.loop import EventOutcome, LabelingConfig, LabelStore, ModelVersion
from ls_backend.loop.jobs import Job, JobStore
from ls_backend.server.background import BackgroundWork
from ls_backend.server.calibration_sample import CalibrationSampler
from ls_backend.server.config import BackendConfig
from ls_backend.server.label_intake import LabelIntake
from ls_backend.server.loop_metrics import LoopMetricsCollector
from ls_backend.server.predictor import ProjectSetup
from ls_backend.server.project_jobs import OnJobPredictions, ProjectJobs
from ls_backend.server.project_registry import ProjectLoop, ProjectRegistry
from ls_backend.server.project_status import project_status
from ls_backend.server.routing import Router
from ls_backend.server.serving import ProjectServing

if TYPE_CHECKING:
    from ls_backend.server.predictor import CascadePredictor

logger = logging.getLogger(__name__)

LABELS_DB = "labels.db"


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
        model_dir = config.resolved_model_dir()
        limits = config.limits
        self.store = LabelStore(
            model_dir / LABELS_DB,
            synchronous=config.learning.label_store_sync.upper(),
            max_text_chars=limits.max_stored_text_chars,
            max_event_bytes=limits.max_stored_event_bytes,
            max_json_depth=limits.max_json_depth,
        )
        # pre-annotation jobs (lwc prelabel, refresh after a promotion): their state in the label store's file
        self.job_store = JobStore(model_dir / LABELS_DB)
        # whether the server is answering a request now (the app sets it): a retrain's tuning process pauses then
        self.server_busy: Callable[[], bool] | None = None
        self.label_studio_api = LabelStudioConnector(access, client_factory)
        self.background = BackgroundWork()
        self.registry = ProjectRegistry(config, self._new_loop)
        self.serving = ProjectServing(predictor, self.registry)
        self.router = Router(self.store, self.background, self.label_studio_api, self.serving, self.register)
        self.intake = LabelIntake(self.store, self.registry, self.background, self.label_studio_api)
        self.project_jobs = ProjectJobs(
            config, predictor, self.store, self.job_store, self.registry, self.label_studio_api, self.router
        )
        self.sampler = CalibrationSampler(predictor, self.store, self.registry, self.serving, self.router)
        self.background.every_tick("the due catch-ups", self.intake.due_catch_ups)
        self.background.every_tick("refreshing promoted projects", self.project_jobs.refresh_promoted)
        self.background.every_tick("reading the RQ jobs' state", self.project_jobs.sync_all)

    def _new_loop(self, number: int, setup: ProjectSetup) -> ProjectLoop:
        return self.serving.new_loop(number, setup, self.store, self._busy)

    def _busy(self) -> bool:
        return self.server_busy is not None and self.server_busy()

    # ---- Label Studio's access (tests swap the client for a fake)

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

    @property
    def on_job_predictions(self) -> OnJobPredictions | None:
        """The server's bookkeeping of a job's predictions, (project, task ids, predictions): /explain, /metrics."""
        return self.project_jobs.on_predicted

    @on_job_predictions.setter
    def on_job_predictions(self, hook: OnJobPredictions | None) -> None:
        self.project_jobs.on_predicted = hook

    # ---- life cycle

    def start(self) -> LearningLoop:
        """Start the background work, and the workers and catch-ups of the projects the model dir knows."""
        self.background.start()
        for loop in self.registry.restore(self.register):
            self.intake.schedule_catch_up(loop)
        self.project_jobs.resume()  # jobs a stop or a crash interrupted go on where Label Studio says they are
        return self

    def stop(self) -> None:
        self.project_jobs.stop()
        self.background.stop()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the background tasks submitted so far are done (tests)."""
        return self.background.wait_idle(timeout)

    # ---- projects

    def project_numbers(self) -> list[int]:
        return self.registry.numbers()

    def get(self, number: int) -> ProjectLoop | None:
        return self.registry.get(number)

    def register(self, setup: ProjectSetup, access: LabelStudioAccess | None = None) -> ProjectLoop | None:
        """The project's loop, created (worker started) on first sight; remembers the latest setup on disk so that
        a restarted server knows the project. None when the setup has no numeric project id;
        :class:`~ls_backend.server.project_registry.ProjectLimitError` when the project is new and
        ``limits.max_projects`` are registered. A threshold change routes the predicted tasks again."""
        registration = self.registry.register(setup, access)
        if registration is None:
            return None
        loop = registration.loop
        if registration.thresholds_changed:
            self.background.submit(lambda: self.router.reroute(loop))
        if loop.label_studio_ready != self.router.label_studio_wanted(loop):
            self.background.submit(lambda: self.router.prepare_label_studio(loop))
        if registration.created:
            label = setup.label
            self.store.set_config(
                loop.number, LabelingConfig(tuple(label.choices), label.data_key, label.from_name)
            )
            loop.serving_seen = self.project_jobs.serving_seen(loop)
            self.background.start_worker(loop.worker)
            self.project_jobs.resume(loop.number)
        return loop

    # ---- serving

    def model_source(self, setup: ProjectSetup) -> ModelVersion | None:
        """The predictor's ``model_source`` (:meth:`ProjectServing.model_source`)."""
        return self.serving.model_source(setup)

    def version_names(self, number: int) -> list[str]:
        return self.serving.version_names(number)

    # ---- requests

    def after_setup(self, setup: ProjectSetup, model_version: str) -> None:
        """At /setup: make sure Label Studio's project points at the version the backend serves (background)."""
        loop = self.get(setup.ls_project) if setup.ls_project is not None else None
        if loop is not None:
            self.router.after_setup(loop, model_version)

    def after_predict(
        self,
        setup: ProjectSetup,
        task_ids: Sequence[int],
        texts: Sequence[str],
        scores: Sequence[float | None],
        model_version: str,
        choices: Sequence[str | None] | None = None,
    ) -> dict[str, int]:
        """Route the predicted tasks (:meth:`Router.after_predict`); returns the batch's band counts."""
        return self.router.after_predict(setup, task_ids, texts, scores, model_version, choices)

    def record_webhook(self, payload: bytes | str | Mapping[str, Any]) -> EventOutcome:
        """Store the event durably (before the caller answers); what follows runs in the background."""
        return self.intake.record_webhook(payload)

    def calibration_sample(self, number: int, k: int, method: str, seed: int | None = None) -> dict[str, Any]:
        """Draw and mark a calibration sample (:meth:`CalibrationSampler.sample`)."""
        return self.sampler.sample(number, k, method, seed)

    def status(self, number: int) -> dict[str, Any]:
        """``loop_status`` plus the routing thresholds, band counts and the latest job."""
        loop = self.get(number)
        if loop is None:
            raise KeyError(f"project {number} is unknown to this backend (no /setup yet)")
        return project_status(loop, self.store, self.job_store, self.sync_job)

    def metrics_collector(self) -> LoopMetricsCollector:
        """Every project's loop gauges, for the app's prometheus_client registry (``/metrics``)."""
        return LoopMetricsCollector(self.registry.loops, self.store, self.job_store)

    # ---- pre-annotation jobs

    def start_job(
        self, number: int, kind: str = "prelabel", mode: str = "missing", trigger: str = "api"
    ) -> Job:
        """Start a pre-annotation job (:meth:`ProjectJobs.start`)."""
        return self.project_jobs.start(number, kind, mode, trigger)

    def cancel_job(self, job_id: int) -> Job:
        return self.project_jobs.cancel(job_id)

    def sync_job(self, job: Job) -> Job:
        return self.project_jobs.sync(job)
