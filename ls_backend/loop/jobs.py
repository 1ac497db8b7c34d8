"""Pre-annotation jobs: which tasks a job must predict (a pure plan), and the job's durable state.

A job predicts a whole Label Studio project in the background (``lwc prelabel``, ``POST /jobs/prelabel``, and the
refresh after a promotion or rollback). Label Studio itself is the truth of what is done: a task is done for a
job when it holds a prediction of the job's target model version that the job did not mean to replace. So a job
that is restarted after a crash (or a kill -9) lists the project again, plans again and creates no prediction
twice; its own state (below) is the progress people see and what it meant to replace.

:func:`plan_tasks` is the pure part, over the tasks as the Label Studio adapter lists them
(:class:`~ls_backend.labelstudio.ListedTask`). :class:`JobStore` keeps each job in the label store's SQLite file
(tables ``jobs`` and ``job_tasks``): status, target version, counters, and per task whether it is done and which
of its predictions the job replaces (``--all``). At most one job per project is active (``queued``, ``running``
or ``paused``): a unique partial index says so, across threads and processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

from ls_backend.database import ThreadConnections, add_missing_columns
from ls_backend.labelstudio import ListedTask

JOB_KINDS = ("prelabel", "refresh")
MODES = ("missing", "all")
"""``missing``: tasks without a prediction of the target version; ``all``: every task, replacing its prediction
of the target version."""
ACTIVE = ("queued", "running", "paused")
FINAL = ("done", "failed", "cancelled")
STATUSES = (*ACTIVE, *FINAL)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project INTEGER NOT NULL,
    kind TEXT NOT NULL,
    mode TEXT NOT NULL,
    trigger TEXT,
    backend TEXT NOT NULL DEFAULT 'embedded',
    status TEXT NOT NULL,
    target_version TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    llm_calls INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    llm_seconds REAL NOT NULL DEFAULT 0,
    llm_cost REAL NOT NULL DEFAULT 0,
    label_studio_seconds REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    retargets INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    error TEXT,
    external_id TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active ON jobs(project)
    WHERE status IN ('queued', 'running', 'paused');
CREATE TABLE IF NOT EXISTS job_tasks (
    job INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
    replaces TEXT,
    PRIMARY KEY (job, task_id)
);
"""
ADDED_COLUMNS = (("jobs", "llm_cost", "REAL NOT NULL DEFAULT 0"),)
"""Columns added after a file may have been made: a label store of an earlier version gets them at open."""


class JobConflict(RuntimeError):
    """The project already has an active job (``job`` is that one)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"project {job.project} already has an active job {job.id} ({job.status})")
        self.job = job


# ---- the plan (pure)


@dataclass(frozen=True)
class JobPlan:
    """What a job still has to do for one target version.

    Attributes:
        to_predict: tasks to predict, in Label Studio's order.
        done: tasks that hold a prediction of the target version the job keeps (nothing to do).
        unreadable: tasks without a text (they get no prediction; counted as skipped).
        replaces: per task to predict (``all`` mode), the ids of its target-version predictions to delete once the
            new one is created.
        stale: prediction ids the job meant to replace whose task already holds the new one (a crash between
            creating and deleting): delete them now.
    """

    to_predict: list[int]
    done: list[int]
    unreadable: list[int]
    replaces: dict[int, list[int]]
    stale: list[int]


def plan_tasks(
    tasks: Iterable[ListedTask],
    target_version: str,
    mode: str,
    replaced: Mapping[int, Sequence[int]] | None = None,
) -> JobPlan:
    """Which tasks a job must predict for ``target_version``.

    ``missing``: a task holding any prediction of the target version is done. ``all``: a task is done once it holds
    a target-version prediction that is not among ``replaced[task]`` (the ids it held when the job first listed
    it, which the job deletes); the first listing passes no ``replaced`` and every readable task is to predict.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    first_listing = replaced is None
    replaced = replaced or {}
    to_predict: list[int] = []
    done: list[int] = []
    unreadable: list[int] = []
    replaces: dict[int, list[int]] = {}
    stale: list[int] = []
    for task in tasks:
        own = sorted(p for p, v in task.predictions.items() if v == target_version)
        if mode == "missing":
            if own:
                done.append(task.task_id)
            elif task.text is None:
                unreadable.append(task.task_id)
            else:
                to_predict.append(task.task_id)
            continue
        old = set(own) if first_listing else set(replaced.get(task.task_id, ()))
        new = [p for p in own if p not in old]
        if new:
            done.append(task.task_id)
            stale += [p for p in own if p in old]
        elif task.text is None:
            unreadable.append(task.task_id)
        else:
            to_predict.append(task.task_id)
            replaces[task.task_id] = sorted(p for p in own if p in old)
    return JobPlan(to_predict, done, unreadable, replaces, sorted(stale))


# ---- durable state


@dataclass(frozen=True)
class Job:
    """One job's state as stored (see :class:`JobStore`)."""

    id: int
    project: int
    kind: str
    mode: str
    status: str
    trigger: str | None = None
    backend: str = "embedded"
    target_version: str | None = None
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    llm_calls: int = 0
    cached: int = 0
    deleted: int = 0
    llm_seconds: float = 0.0
    llm_cost: float = 0.0
    label_studio_seconds: float = 0.0
    attempts: int = 0
    retargets: int = 0
    cancel_requested: bool = False
    note: str | None = None
    error: str | None = None
    external_id: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float = 0.0
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def processed(self) -> int:
        """Tasks the job is through with: predicted, skipped (already done or unreadable) or failed."""
        return self.done + self.skipped + self.failed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["processed"] = self.processed
        data["pending"] = max(self.total - self.processed, 0)
        elapsed = (self.finished_at or self.updated_at) - (self.started_at or self.created_at)
        data["elapsed_s"] = round(max(elapsed, 0.0), 3)
        return data


_COLUMNS = tuple(f for f in Job.__dataclass_fields__)


class JobStore:
    """Jobs in the label store's SQLite file (WAL; one connection per thread and process)."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_ms: int = 10_000) -> None:
        self._connections = ThreadConnections(path, busy_timeout_ms, "FULL")
        self.path = self._connections.path
        self.busy_timeout_ms = self._connections.busy_timeout_ms
        self._write_lock = self._connections.write_lock
        self._connection().executescript(SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        add_missing_columns(self._connection(), ADDED_COLUMNS)

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._connections.transaction()

    # ---- reading

    @staticmethod
    def _job(row: Sequence[Any]) -> Job:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["cancel_requested"] = bool(values["cancel_requested"])
        return Job(**values)

    def get(self, job_id: int) -> Job | None:
        row = (
            self._connection()
            .execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (int(job_id),))
            .fetchone()
        )
        return None if row is None else self._job(row)

    def jobs(self, project: int | None = None, limit: int = 20, active_only: bool = False) -> list[Job]:
        """The latest jobs (newest first), of one project or all."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        where: list[str] = []
        args: list[Any] = []
        if project is not None:
            where.append("project = ?")
            args.append(int(project))
        if active_only:
            where.append(f"status IN ({', '.join('?' * len(ACTIVE))})")
            args += [*ACTIVE]
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self._connection().execute(query + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
        return [self._job(r) for r in rows.fetchall()]

    def active(self, project: int) -> Job | None:
        found = self.jobs(project, limit=1, active_only=True)
        return found[0] if found else None

    def latest(self, project: int) -> Job | None:
        found = self.jobs(project, limit=1)
        return found[0] if found else None

    def replaced(self, job_id: int) -> dict[int, list[int]] | None:
        """Per task, the prediction ids the job replaces (None before the job's first plan)."""
        conn = self._connection()
        rows = conn.execute(
            "SELECT task_id, replaces FROM job_tasks WHERE job = ?", (int(job_id),)
        ).fetchall()
        if not rows:
            return None
        return {int(t): [int(p) for p in json.loads(r or "[]")] for t, r in rows}

    def task_states(self, job_id: int) -> dict[int, str]:
        rows = self._connection().execute(
            "SELECT task_id, state FROM job_tasks WHERE job = ?", (int(job_id),)
        )
        return {int(t): str(s) for t, s in rows.fetchall()}

    # ---- writing

    def create(
        self,
        project: int,
        kind: str = "prelabel",
        mode: str = "missing",
        trigger: str | None = None,
        backend: str = "embedded",
    ) -> Job:
        """A new ``queued`` job; :class:`JobConflict` (carrying the active one) when the project has one."""
        if kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {list(JOB_KINDS)}, got {kind!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        now = time.time()
        try:
            with self._transaction() as db:
                cursor = db.execute(
                    "INSERT INTO jobs (project, kind, mode, trigger, backend, status, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (int(project), kind, mode, trigger, backend, now, now),
                )
                job_id = int(cursor.lastrowid or 0)
        except sqlite3.IntegrityError:
            active = self.active(project)
            if active is None:  # it finished between the insert and this read: try once more
                return self.create(project, kind, mode, trigger, backend)
            raise JobConflict(active) from None
        job = self.get(job_id)
        assert job is not None
        return job

    def update(self, job_id: int, **values: Any) -> Job:
        """Set fields of a job (``status``, ``note``, ``error``, ...); a final status sets ``finished_at``."""
        unknown = set(values) - set(_COLUMNS) - {"id"}
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        status = values.get("status")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}, got {status!r}")
        now = time.time()
        values["updated_at"] = now
        if status in FINAL:
            values.setdefault("finished_at", now)
        if status == "running":
            values.setdefault("finished_at", None)
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), int(job_id)))
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def start_attempt(self, job_id: int) -> Job:
        """Mark the job running (again): one more attempt, cancel flag kept."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, ?), "
                "updated_at = ?, note = NULL WHERE id = ?",
                (time.time(), time.time(), int(job_id)),
            )
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def set_plan(self, job_id: int, target_version: str, plan: JobPlan, retarget: bool = False) -> Job:
        """Record a plan: the target version, every task's state and what it replaces, and the counters it
        implies (``skipped`` = done before this job or unreadable). A retarget (the serving version changed)
        starts the counts again for the new version."""
        with self._transaction() as db:
            old = dict(
                db.execute("SELECT task_id, state FROM job_tasks WHERE job = ?", (int(job_id),)).fetchall()
            )
            if retarget:
                db.execute("DELETE FROM job_tasks WHERE job = ?", (int(job_id),))
                old = {}
            rows: list[tuple[int, int, str, str | None]] = []
            # tasks this job predicted before a restart stay 'done' (they count as its work, not as skipped),
            # and so do its pending ones that Label Studio now holds: a kill -9 between the create request and
            # its record leaves them so
            for task in plan.done:
                ours = old.get(task) in ("done", "pending")
                rows.append((int(job_id), task, "done" if ours else "skipped", None))
            rows += [(int(job_id), t, "skipped", None) for t in plan.unreadable]
            for task in plan.to_predict:
                replaces = json.dumps(plan.replaces.get(task, []))
                rows.append((int(job_id), task, "pending", replaces))
            db.executemany(
                "INSERT INTO job_tasks (job, task_id, state, replaces) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (job, task_id) DO UPDATE SET state = excluded.state, "
                "replaces = COALESCE(job_tasks.replaces, excluded.replaces)",
                rows,
            )
            counts = dict(
                db.execute(
                    "SELECT state, COUNT(*) FROM job_tasks WHERE job = ? GROUP BY state", (int(job_id),)
                ).fetchall()
            )
            total = sum(counts.values())
            extra = ", retargets = retargets + 1, failed = 0, llm_calls = 0, cached = 0" if retarget else ""
            db.execute(
                f"UPDATE jobs SET target_version = ?, total = ?, done = ?, skipped = ?, updated_at = ?{extra} "
                "WHERE id = ?",
                (target_version, total, counts.get("done", 0), counts.get("skipped", 0), time.time(),
                 int(job_id)),
            )  # fmt: skip
        job = self.get(job_id)
        assert job is not None
        return job

    def record_batch(
        self,
        job_id: int,
        done: Sequence[int],
        failed: Sequence[int] = (),
        llm_calls: int = 0,
        cached: int = 0,
        deleted: int = 0,
        llm_seconds: float = 0.0,
        label_studio_seconds: float = 0.0,
        llm_cost: float = 0.0,
    ) -> Job:
        """A batch is through: its tasks' states and the job's counters, in one transaction (``llm_seconds``: the
        cascade's wall time; ``llm_cost``: what its LLM calls cost, in the LLMs' unit: measured seconds by
        default)."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE job_tasks SET state = 'done' WHERE job = ? AND task_id = ?",
                [(int(job_id), int(t)) for t in done],
            )
            db.executemany(
                "UPDATE job_tasks SET state = 'failed' WHERE job = ? AND task_id = ?",
                [(int(job_id), int(t)) for t in failed],
            )
            db.execute(
                "UPDATE jobs SET done = done + ?, failed = failed + ?, llm_calls = llm_calls + ?, "
                "cached = cached + ?, deleted = deleted + ?, llm_seconds = llm_seconds + ?, "
                "label_studio_seconds = label_studio_seconds + ?, llm_cost = llm_cost + ?, updated_at = ? "
                "WHERE id = ?",
                (len(done), len(failed), int(llm_calls), int(cached), int(deleted), float(llm_seconds),
                 float(label_studio_seconds), float(llm_cost), time.time(), int(job_id)),
            )  # fmt: skip
        job = self.get(job_id)
        assert job is not None
        return job

    def request_cancel(self, job_id: int) -> Job:
        """Ask the job to stop after its current batch (a queued or paused job is cancelled at once)."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if not job.active:
            return job
        if job.status == "queued":
            return self.update(job_id, status="cancelled", cancel_requested=1, note="cancelled before it ran")
        return self.update(job_id, cancel_requested=1)
