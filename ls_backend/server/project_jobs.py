"""The projects' pre-annotation jobs, as the learning loop runs them: started by ``/jobs/prelabel`` and after every
promotion or rollback (``loop.refresh_on_promotion``), embedded in this process (:class:`~ls_backend.server.jobs.
JobManager`) or on RQ workers (:mod:`ls_backend.server.rq_jobs`, whose state is read back here); a job's predicted
tasks are routed like /predict's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ls_backend.labelstudio import LabelStudioConnector
from ls_backend.loop import LabelStore, VersionError
from ls_backend.loop.jobs import Job, JobStore
from ls_backend.server.config import BackendConfig
from ls_backend.server.jobs import JobContext, JobManager, StoredJobState
from ls_backend.server.predictor import Prediction
from ls_backend.server.project_registry import ProjectLoop, ProjectRegistry
from ls_backend.server.routing import Router
from ls_backend.server.serving import served_name

if TYPE_CHECKING:
    from ls_backend.server.predictor import CascadePredictor

logger = logging.getLogger(__name__)

OnJobPredictions = Callable[[int, list[int], list[Prediction]], object]
"""The server's bookkeeping of a job's predictions, ``(project, task ids, predictions)``: /explain and /metrics."""


class ProjectJobs:
    """Start, cancel, follow and refresh the projects' pre-annotation jobs.

    Args:
        config: the server's configuration (``loop.job_backend``, ``loop.redis_url``).
        predictor: the cascade the embedded jobs predict with.
        store: the label store (a refresh needs predictions to refresh).
        job_store: the jobs' durable state.
        registry: the registered projects.
        label_studio: makes a project's Label Studio adapter.
        router: routes a job's predicted tasks as /predict's.
    """

    def __init__(
        self,
        config: BackendConfig,
        predictor: CascadePredictor,
        store: LabelStore,
        job_store: JobStore,
        registry: ProjectRegistry,
        label_studio: LabelStudioConnector,
        router: Router,
    ) -> None:
        self.config = config
        self.predictor = predictor
        self.store = store
        self.job_store = job_store
        self.registry = registry
        self.label_studio_api = label_studio
        self.router = router
        self.on_predicted: OnJobPredictions | None = None
        self.manager = JobManager(job_store, self._context, registry.project_dir)

    # ---- starting, cancelling, following

    def start(self, number: int, kind: str = "prelabel", mode: str = "missing", trigger: str = "api") -> Job:
        """Start a job that predicts the project's tasks in the background (``mode``: ``missing`` or ``all``).
        :class:`KeyError` for a project without /setup, :class:`~ls_backend.loop.jobs.JobConflict` (carrying the
        active job) when one runs, :class:`RuntimeError` without Label Studio access."""
        loop = self.registry.get(number)
        if loop is None:
            raise KeyError(f"project {number} is unknown to this backend (no /setup yet)")
        if self.label_studio_api.project(number, loop.access) is None:
            raise RuntimeError(
                f"project {number}: a job needs Label Studio's API (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)"
            )
        settings = self.config.learning
        if settings.job_backend != "rq":
            return self.manager.submit(number, kind, mode, trigger)
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

    def cancel(self, job_id: int) -> Job:
        """Ask a job to stop after its current batch (:class:`KeyError` for an unknown job)."""
        job = self.manager.cancel(job_id)
        if job.backend == "rq" and job.external_id and self.config.learning.redis_url:
            from ls_backend.server import rq_jobs

            rq_jobs.request_cancel(self.config.learning.redis_url, job.external_id)
        return self.sync(job)

    def sync(self, job: Job) -> Job:
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

    def sync_all(self) -> None:
        """Read every active RQ job's state (a periodic task, so a finished job is applied unasked)."""
        if self.config.learning.job_backend != "rq":
            return
        for job in self.job_store.jobs(active_only=True, limit=1000):
            self.sync(job)

    def _apply_predicted(self, job: Job, rows: Sequence[Sequence[Any]]) -> None:
        loop = self.registry.get(job.project)
        if loop is None or not rows:
            return
        version = job.target_version or ""
        try:
            self.router.after_predict(
                loop.setup, [int(r[0]) for r in rows], [str(r[1]) for r in rows],
                [r[2] for r in rows], version, [r[3] for r in rows],
            )  # fmt: skip
        except Exception:
            logger.exception("job %s: storing its predictions in the label store failed", job.id)

    def resume(self, project: int | None = None) -> list[int]:
        """Start the embedded jobs (of one project, or all) a stop or a crash interrupted: they go on where Label
        Studio says they are."""
        return self.manager.resume(project)

    def stop(self) -> None:
        self.manager.stop()

    def _context(self, job: Job, stopping: threading.Event) -> JobContext | None:
        loop = self.registry.get(job.project)
        if loop is None:
            return None
        label_studio = self.label_studio_api.project(loop.number, loop.access)
        if label_studio is None:
            raise RuntimeError("no Label Studio access (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")

        def after_batch(ids: list[int], texts: list[str], scores: list[float | None], version: str,
                        choices: list[str | None]) -> object:  # fmt: skip
            return self.router.after_predict(loop.setup, ids, texts, scores, version, choices)

        hook = self.on_predicted
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

    # ---- refresh after a promotion or rollback

    @staticmethod
    def serving_seen(loop: ProjectLoop) -> tuple[str | None, str | None]:
        """The project's serving pointer and the name it serves under, now."""
        name = loop.versions.serving_name()
        served = None
        if name is not None:
            with contextlib.suppress(VersionError):
                served = served_name(loop.versions.load(name))
        return name, served

    def refresh_promoted(self) -> None:
        """Refresh every project whose serving version changed (a periodic task; one project's failure is logged
        and costs the others nothing)."""
        for loop in self.registry.loops():
            try:
                self.refresh_if_promoted(loop)
            except Exception:
                logger.exception("project %s: checking for a promotion failed", loop.number)

    def refresh_if_promoted(self, loop: ProjectLoop) -> Job | None:
        """After a promotion or rollback (by a retrain here, or ``lwc rollback`` from anywhere) changed the version
        a project serves under, re-predict its tasks with it (``loop.refresh_on_promotion``; only projects with
        predictions). A job already active retargets itself at its next batch instead."""
        seen = self.serving_seen(loop)
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
            job = self.start(loop.number, kind="refresh", mode="missing", trigger=f"{action} {seen[1]}")
        except Exception as e:
            logger.warning(
                "project %s: cannot refresh its predictions after the %s: %s", loop.number, action, e
            )
            return None
        logger.info("project %s: %s to %s; refresh job %s", loop.number, action, seen[1], job.id)
        return job
