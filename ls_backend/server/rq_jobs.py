"""Pre-annotation jobs on RQ (Redis Queue), for when one backend process is not enough: the same
:func:`~ls_backend.server.jobs.run_job` runs on ``lwc worker`` processes, on any machine that reaches Redis and
Label Studio, with LLMs of their own (e.g. OpenAI-compatible inference servers; docs/server.md).

With ``loop.job_backend: rq`` and ``loop.redis_url``, the server still owns each job (its row in the label store,
one active job per project, ``/jobs``, ``/status``, ``/metrics``), and enqueues it on the queue ``lwc-jobs`` with
a spec of plain JSON (RQ's JSON serializer: no pickle): the project's labeling config, settings and question, and
the serving version itself (calibrators + policy as JSON), so that a worker serves exactly what the server
serves, under its name. The worker's config names the same LLMs (by name; where they run is its own business).

On the worker, the job's state is a job store of its own (``<model_dir>/worker-jobs.db``), mirrored into the RQ
job's ``meta`` after every change, where the server reads the progress. Label Studio stays the truth of what is
done, so a job retried after a worker died (``Retry``: RQ requeues an abandoned job once its heartbeat expires)
creates nothing twice. A cancel is a Redis key the worker reads before each batch. When the job ends, the server
takes the predicted tasks' scores from its result into the label store (routing, review bands).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ls_backend.labelstudio import LabelStudioAccess, LabelStudioProject, connect, parse_label_config
from ls_backend.loop.jobs import Job, JobConflict, JobPlan, JobStore
from ls_backend.loop.model import ServingModel
from ls_backend.server.jobs import JobContext, StoredJobState, run_job

logger = logging.getLogger(__name__)

QUEUE_NAME = "lwc-jobs"
JOB_TIMEOUT_S = 7 * 24 * 3600  # a job runs as long as its project needs; RQ's default (180 s) would kill it
RESULT_TTL_S = 7 * 24 * 3600
WORKER_JOBS_DB = "worker-jobs.db"


def connection(redis_url: str) -> Any:
    from redis import Redis

    return Redis.from_url(redis_url)


def queue(redis_url: str) -> Any:
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(QUEUE_NAME, connection=connection(redis_url), serializer=JSONSerializer)


def rq_job_id(job: Job) -> str:
    return f"lwc-job-{job.project}-{job.id}"


def cancel_key(rq_id: str) -> str:
    return f"lwc:cancel:{rq_id}"


def enqueue(redis_url: str, job: Job, spec: Mapping[str, Any], retries: int = 3) -> str:
    """Put the job on the queue; returns its RQ id."""
    from rq import Retry

    rq_id = rq_job_id(job)
    queue(redis_url).enqueue(
        "ls_backend.server.rq_jobs.run_queued_job",
        dict(spec),
        job_id=rq_id,
        job_timeout=JOB_TIMEOUT_S,
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,
        retry=Retry(max=retries, interval=[5, 30, 120][:retries]),
        meta={"lwc": job.to_dict()},
    )
    return rq_id


def request_cancel(redis_url: str, rq_id: str) -> None:
    connection(redis_url).set(cancel_key(rq_id), "1", ex=RESULT_TTL_S)


@dataclass
class QueuedJobStatus:
    """What the server reads of an RQ job: RQ's status, the worker's mirrored job, the result or the error."""

    rq_status: str
    job: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None


def read_status(redis_url: str, rq_id: str) -> QueuedJobStatus | None:
    """The RQ job's state (None when Redis has no such job any more)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer

    try:
        rq_job = RQJob.fetch(rq_id, connection=connection(redis_url), serializer=JSONSerializer)
    except NoSuchJobError:
        return None
    raw_status = rq_job.get_status(refresh=True)
    status = str(getattr(raw_status, "value", raw_status))  # JobStatus is a str enum: its value, "finished"
    meta = rq_job.get_meta(refresh=True).get("lwc")
    result = rq_job.return_value() if status == "finished" else None
    error: str | None = None
    if status == "failed":
        latest = rq_job.latest_result()
        lines = (latest.exc_string or "").strip().splitlines() if latest is not None else []
        error = lines[-1] if lines else "the RQ job failed"
    return QueuedJobStatus(
        status.rsplit(".", 1)[-1], meta, result if isinstance(result, dict) else None, error
    )


# ---- on the worker


class MirroredJobState(StoredJobState):
    """The worker's own job store, mirrored into the RQ job's ``meta`` (the server's view) after every change;
    a cancel comes from a Redis key."""

    def __init__(self, store: JobStore, job_id: int, rq_job: Any, server_job: Mapping[str, Any]) -> None:
        super().__init__(store, job_id)
        self.rq_job = rq_job
        self.server_job = dict(server_job)

    def _mirror(self, job: Job) -> Job:
        view = {**job.to_dict(), "id": self.server_job["id"], "backend": "rq", "external_id": self.rq_job.id}
        self.rq_job.meta["lwc"] = view
        self.rq_job.save_meta()
        return job

    def get(self) -> Job:
        job = super().get()
        if not job.cancel_requested and self.rq_job.connection.exists(cancel_key(self.rq_job.id)):
            job = self.store.update(self.job_id, cancel_requested=1)
        return job

    def start_attempt(self) -> Job:
        return self._mirror(super().start_attempt())

    def update(self, **values: Any) -> Job:
        return self._mirror(super().update(**values))

    def set_plan(self, target_version: str, plan: JobPlan, retarget: bool) -> Job:
        return self._mirror(super().set_plan(target_version, plan, retarget))

    def record_batch(self, done: Sequence[int], failed: Sequence[int], **counts: Any) -> Job:
        return self._mirror(super().record_batch(done, failed, **counts))


@dataclass(frozen=True)
class _SpecVersion:
    name: str
    model: ServingModel


def run_queued_job(spec: dict[str, Any]) -> dict[str, Any]:
    """The RQ task: run the server's job ``spec`` on this worker (its config: ``$LWC_CONFIG``; Label Studio:
    ``$LABEL_STUDIO_URL``/``$LABEL_STUDIO_API_KEY``). Returns the job's final state and the predicted tasks
    (``[task, text, score, choice]``) for the server's label store."""
    from rq import get_current_job

    from ls_backend.server.config import load_config
    from ls_backend.server.predictor import CascadePredictor, ProjectSetup

    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("run_queued_job runs on an RQ worker")
    config = load_config()
    access = LabelStudioAccess.from_env()
    if access is None:
        raise RuntimeError("the worker needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    extra = dict(spec.get("extra_params") or {})
    project_config = config.merged(extra)
    setup = ProjectSetup(
        str(spec["project_id"]),
        parse_label_config(str(spec["label_config"])),
        project_config,
        str(spec["question"]),
        str(spec.get("question_source") or "default"),
        label_config_xml=str(spec["label_config"]),
        extra_params=extra,
    )
    version = _SpecVersion(str(spec["version"]["name"]), ServingModel.from_dict(spec["version"]["model"]))
    predictor = CascadePredictor(model_source=lambda _: version)
    if predictor.model_version(setup) != version.name:
        raise RuntimeError(
            f"this worker's LLMs {[s.name for s in predictor.slots(project_config)]} are not those of version "
            f"{version.name} ({list(version.model.llms)})"
        )
    server_job = dict(spec["job"])
    store = JobStore(project_config.resolved_model_dir() / WORKER_JOBS_DB)
    local = _local_job(store, server_job, rq_job.id)
    rows: list[list[Any]] = []

    def after_batch(ids: list[int], texts: list[str], scores: list[float | None], _: str,
                    choices: list[str | None]) -> None:  # fmt: skip
        rows.extend([t, x, s, c] for t, x, s, c in zip(ids, texts, scores, choices, strict=True))

    context = JobContext(
        state=MirroredJobState(store, local.id, rq_job, server_job),
        label_studio=LabelStudioProject(connect(access, timeout=30.0), int(server_job["project"])),
        label=setup.label,
        predict=lambda texts: predictor.predict(setup, texts, background=True),
        version=lambda: version.name,
        batch_size=project_config.learning.job_batch_size,
        after_batch=after_batch,
        stopping=threading.Event(),
    )
    finished = run_job(context)
    if finished.status == "failed":
        raise RuntimeError(f"job {server_job['id']} failed: {finished.error}")
    view = {**finished.to_dict(), "id": server_job["id"], "backend": "rq", "external_id": rq_job.id}
    return {"job": view, "predicted": rows}


def _local_job(store: JobStore, server_job: Mapping[str, Any], rq_id: str) -> Job:
    """The worker's row for this RQ job: the one a previous try left (a retry resumes it), else a new one; a
    stale active row of the same project from another RQ job (a worker that died) is closed first."""
    for job in store.jobs(int(server_job["project"]), limit=1000):
        if job.external_id == rq_id:
            return job if job.active else store.update(job.id, status="queued")
    project = int(server_job["project"])
    try:
        job = store.create(
            project, str(server_job["kind"]), str(server_job["mode"]), server_job.get("trigger"), "rq"
        )
    except JobConflict as conflict:
        store.update(conflict.job.id, status="failed", error="superseded by another RQ job of the project")
        job = store.create(
            project, str(server_job["kind"]), str(server_job["mode"]), server_job.get("trigger"), "rq"
        )
    return store.update(job.id, external_id=rq_id)


# How long the worker's command listener (RQ's pubsub thread) sleeps between looks at its stop flag. RQ sleeps 60 s;
# redis-py 8.2's PubSubWorkerThread.stop() waits for the thread, and RQ unsubscribes before it stops the thread, so
# the thread woken by the unsubscribe reply went back to sleep and a SIGTERM took up to 60 s to stop an idle worker
# (12 of 15 tries on a busy machine; tests/test_rq_worker.py).
COMMAND_LISTENER_SLEEP_S = 1.0


def command_listening_worker_class() -> type:
    """RQ's in-process worker with a command listener that stops within :data:`COMMAND_LISTENER_SLEEP_S`."""
    from rq import SimpleWorker

    class Worker(SimpleWorker):
        def subscribe(self) -> None:
            self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
            self.pubsub = self.connection.pubsub()
            self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
            self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
                sleep_time=COMMAND_LISTENER_SLEEP_S,
                daemon=True,
                exception_handler=self._pubsub_exception_handler,
            )

    return Worker


def run_worker(redis_url: str, burst: bool = False, name: str | None = None) -> bool:
    """An RQ worker on ``lwc-jobs`` in this process (models stay loaded between jobs: no fork per job)."""
    from rq.serializers import JSONSerializer

    worker_class = command_listening_worker_class()
    worker = worker_class(
        [queue(redis_url)], connection=connection(redis_url), serializer=JSONSerializer, name=name
    )
    logger.info("RQ worker %s on %s (queue %s)", worker.name, redis_url, QUEUE_NAME)
    return bool(worker.work(burst=burst, logging_level=os.environ.get("LWC_WORKER_LOG_LEVEL", "INFO")))
