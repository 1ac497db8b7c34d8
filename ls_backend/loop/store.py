"""The durable label store: webhook events and the labels they carry, in SQLite (WAL), safe for several processes.

Every webhook is inserted as a raw event and applied in one transaction before the server answers, so a label
Label Studio sent is never lost once acknowledged: with ``synchronous=FULL`` (the class's default) each commit is
fsynced and survives a power cut; with ``NORMAL`` (the server's default, ``loop.label_store_sync``) it survives a
crash or kill of the process, and a power cut may lose what was stored since the last WAL checkpoint (the server's
catch-up from Label Studio restores those labels). Applying is idempotent:

- an annotation is keyed by its Label Studio id; a version with a newer ``updated_at`` replaces the stored one,
  an equal one is a duplicate (no change), an older one is ``stale`` (ignored);
- ``ANNOTATIONS_DELETED`` leaves a tombstone: a late ``ANNOTATION_CREATED``/``UPDATED`` of a deleted id is ignored
  (``deleted``), because Label Studio never reuses annotation ids;
- an annotation without a usable label (cancelled/skipped, no choice, several choices, a label outside the
  project's classes) is kept with its ``ignored_reason``; it replaces an earlier labeled version of itself;
- a payload that cannot be read is stored raw and recorded as ignored (``malformed``) with the error message.

One event never costs another anything: concurrent webhooks are stored in one transaction (group commit), each
inside its own savepoint, so an event that fails to apply (an id beyond 64 bits, a lone surrogate, a shape this
module did not foresee) is rolled back alone and stored as ``ignored`` with the error as its reason. Only a
failure of the database itself (disk, lock timeout) fails the batch.

Stored copies are bounded: a raw payload longer than ``max_event_bytes`` and a task text longer than
``max_text_chars`` are stored cut to that size, with the original's length and sha256 and a ``truncated`` flag
(the label is read from the whole payload before the copy is cut). Lone surrogates (which UTF-8, and so SQLite,
cannot hold) are stored as U+FFFD.

Why a label was asked for is recorded separately (:meth:`LabelStore.mark_requests`): the backend marks tasks it
sends to humans as a ``calibration`` sample (with each task's inclusion probability) or for ``review``; a label
on a task with no mark is the ``annotator``'s own choice; an annotation the backend made itself from a confident
prediction (auto-accept, :meth:`LabelStore.mark_auto_annotation`) is ``auto`` until a human edits it. See docs/learning-loop.md for which labels feed what.

Connections: one per thread and process (SQLite connections must not cross a fork); writers use
``BEGIN IMMEDIATE`` and wait up to ``busy_timeout_ms`` for each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ls_backend.database import ThreadConnections, add_missing_columns
from ls_backend.loop.events import (
    DELETE_ACTION,
    TRAIN_ACTION,
    UPSERT_ACTIONS,
    AnnotationRecord,
    LabelingConfig,
    MalformedEvent,
    annotation_record,
    deleted_ids,
    exceeds_depth,
    label_studio_id,
    labeling_config_of,
    project_id_of,
    task_text,
    text_may_exceed_depth,
)

logger = logging.getLogger(__name__)

LabelSource = Literal["calibration", "review", "annotator", "auto"]
LABEL_SOURCES: tuple[LabelSource, ...] = ("calibration", "review", "annotator", "auto")
RequestReason = Literal["calibration", "review"]

MAX_TEXT_CHARS = 100_000
"""Default cut of a stored task text (the prompt reads at most ``max_text_chars`` = 2,000 of them anyway)."""
MAX_EVENT_BYTES = 1 << 20
"""Default cut of a stored raw webhook payload (Label Studio's are a few kB)."""
MAX_JSON_DEPTH = 100
"""Default deepest nesting of lists and objects a payload may have (Label Studio's nest about 6 deep)."""
_SURROGATE = re.compile("[\ud800-\udfff]")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project INTEGER,
    action TEXT,
    origin TEXT NOT NULL,
    received_at REAL NOT NULL,
    payload TEXT NOT NULL,
    outcome TEXT,
    reason TEXT,
    payload_bytes INTEGER,
    payload_sha256 TEXT,
    payload_truncated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_project ON events(project, outcome);
CREATE TABLE IF NOT EXISTS annotations (
    project INTEGER NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER,
    label TEXT,
    ignored_reason TEXT,
    updated_at_us INTEGER,
    created_at_us INTEGER,
    completed_by INTEGER,
    ground_truth INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    change_seq INTEGER NOT NULL,
    PRIMARY KEY (project, annotation_id)
);
CREATE INDEX IF NOT EXISTS annotations_task ON annotations(project, task_id);
CREATE INDEX IF NOT EXISTS annotations_seq ON annotations(project, change_seq);
CREATE TABLE IF NOT EXISTS tasks (
    project INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    text TEXT,
    text_chars INTEGER,
    text_sha256 TEXT,
    text_truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project, task_id)
);
CREATE TABLE IF NOT EXISTS requests (
    project INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('calibration', 'review')),
    model_version TEXT,
    inclusion_probability REAL,
    sampler TEXT,
    requested_at REAL NOT NULL,
    PRIMARY KEY (project, task_id, reason)
);
CREATE TABLE IF NOT EXISTS predictions (
    project INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    score REAL,
    model_version TEXT,
    predicted_at REAL NOT NULL,
    PRIMARY KEY (project, task_id)
);
CREATE TABLE IF NOT EXISTS auto_annotations (
    project INTEGER NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    updated_at_us INTEGER,
    model_version TEXT,
    PRIMARY KEY (project, annotation_id)
);
CREATE TABLE IF NOT EXISTS projects (
    project INTEGER PRIMARY KEY,
    classes TEXT NOT NULL,
    data_key TEXT,
    from_name TEXT
);
"""
# columns added after the first release: (table, column, declaration), added to older files when opened
ADDED_COLUMNS = (
    ("events", "payload_bytes", "INTEGER"),
    ("events", "payload_sha256", "TEXT"),
    ("events", "payload_truncated", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "text_chars", "INTEGER"),
    ("tasks", "text_sha256", "TEXT"),
    ("tasks", "text_truncated", "INTEGER NOT NULL DEFAULT 0"),
)


@dataclass(frozen=True)
class StoredText:
    """What the store keeps of a text: the copy (cut to a limit, lone surrogates as U+FFFD), and the original's
    length (characters, or bytes for raw payloads) and sha256 (of its UTF-8 bytes, surrogates passed through)."""

    text: str
    length: int
    sha256: str
    truncated: bool


def stored_text(text: str, max_chars: int) -> StoredText:
    """The stored copy of a task text: at most ``max_chars`` characters."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    copy = _SURROGATE.sub("\ufffd", text[:max_chars])
    return StoredText(copy, len(text), digest, len(text) > max_chars)


def stored_payload(raw: bytes | str, max_bytes: int) -> StoredText:
    """The stored copy of a raw payload: at most ``max_bytes`` bytes of UTF-8 (cut at a character boundary;
    undecodable bytes and lone surrogates as U+FFFD)."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(data).hexdigest()
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else _SURROGATE.sub("\ufffd", raw)
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", "ignore")
    return StoredText(text, len(data), digest, len(encoded) > max_bytes or len(data) > max_bytes)


def _storable(text: str, limit: int = 1000) -> str:
    """A short field (action, reason) as SQLite can store it."""
    return _SURROGATE.sub("\ufffd", text[:limit])


@dataclass(frozen=True)
class EventOutcome:
    """What :meth:`LabelStore.record_event` did with one payload.

    Attributes:
        event_id: the stored event's id.
        action: the payload's ``action`` (None if it had none).
        project: the numeric project id (None if the payload names none).
        outcome: ``applied`` (a label changed), ``duplicate``, ``ignored``, ``retrain`` (START_TRAINING) or
            ``acknowledged`` (an action the loop does not use, e.g. PROJECT_UPDATED).
        reason: why it was ignored (see :data:`ls_backend.loop.events.IGNORE_REASONS`) or a note.
        seconds: time spent storing and applying it.
        body: the parsed payload (None when it could not be read), so the caller need not parse it again.
    """

    event_id: int
    action: str | None
    project: int | None
    outcome: str
    reason: str | None = None
    seconds: float = 0.0
    body: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def retrain_requested(self) -> bool:
        return self.outcome == "retrain"

    @property
    def label_changed(self) -> bool:
        return self.outcome == "applied"


@dataclass(frozen=True)
class CatchUpResult:
    """Counts of a catch-up: annotations created, updated, unchanged, ignored (stale/deleted) and tombstoned."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    ignored: int = 0
    deleted: int = 0
    malformed: int = 0


@dataclass
class LabeledTasks:
    """One label per labeled task of a project (a snapshot), aligned arrays.

    When a task has several live labeled annotations, a ground-truth one wins, else the latest updated.

    Attributes:
        task_ids: (n,) int64.
        labels: (n,) the chosen class names (object array of str).
        sources: (n,) ``calibration``, ``review``, ``annotator`` or ``auto`` (the backend's own auto-accepted
            annotation, never trained on) (object array).
        inclusion_probabilities: (n,) the calibration sample's inclusion probability, NaN for other sources.
        texts: the task texts (None where the store has not seen one).
        annotation_ids, updated_at_us: (n,) int64, which annotation version each label is.
        watermark: the store's change sequence when the snapshot was taken (labels changed later are newer).
    """

    task_ids: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    inclusion_probabilities: np.ndarray
    texts: list[str | None]
    annotation_ids: np.ndarray
    updated_at_us: np.ndarray
    watermark: int = 0
    request_versions: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.task_ids.shape[0])

    def subset(self, mask: np.ndarray) -> LabeledTasks:
        index = np.flatnonzero(mask)
        return LabeledTasks(
            task_ids=self.task_ids[index],
            labels=self.labels[index],
            sources=self.sources[index],
            inclusion_probabilities=self.inclusion_probabilities[index],
            texts=[self.texts[i] for i in index],
            annotation_ids=self.annotation_ids[index],
            updated_at_us=self.updated_at_us[index],
            watermark=self.watermark,
            request_versions=[self.request_versions[i] for i in index] if self.request_versions else [],
        )


class LabelStore:
    """Labels of all projects in one SQLite file (see the module docstring).

    Args:
        path: the database file (created with its directory if missing).
        synchronous: SQLite's ``synchronous`` pragma: ``FULL`` (default) makes each acknowledged event survive a
            power cut; ``NORMAL`` survives a crash of the process only, and is faster.
        busy_timeout_ms: how long a writer waits for another one.
        max_text_chars: a task text longer than this is stored cut to it (with its length and sha256).
        max_event_bytes: a raw payload longer than this (UTF-8 bytes) is stored cut to it (with its size and
            sha256); the event is applied from the whole payload.
        max_json_depth: a payload nested deeper than this is stored as ignored (``malformed``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        *,
        max_text_chars: int = MAX_TEXT_CHARS,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_json_depth: int = MAX_JSON_DEPTH,
    ):
        for name, value in (
            ("max_text_chars", max_text_chars),
            ("max_event_bytes", max_event_bytes),
            ("max_json_depth", max_json_depth),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._connections = ThreadConnections(path, busy_timeout_ms, synchronous)
        self.path = self._connections.path
        self.synchronous = self._connections.synchronous
        self.busy_timeout_ms = self._connections.busy_timeout_ms
        self.max_text_chars = max_text_chars
        self.max_event_bytes = max_event_bytes
        self.max_json_depth = max_json_depth
        self._write_lock = self._connections.write_lock
        self._pending_lock = threading.Lock()
        self._pending: list[_PendingEvent] = []
        self._leading = False  # a thread is storing a batch (under _pending_lock)
        self._configs: dict[int, LabelingConfig] = {}
        # transactions of the group commit, and the events they stored (changed under the write lock)
        self._group_commits = 0
        self._group_committed_events = 0
        self._connection().executescript(SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        add_missing_columns(self._connection(), ADDED_COLUMNS)

    # ---- connections

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._connections.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        # what a failed transaction remembered of project configs is gone with it
        return self._connections.transaction(on_rollback=self._configs.clear)

    # ---- webhooks

    def record_event(self, payload: Any, origin: str = "webhook") -> EventOutcome:
        """Store a webhook payload (a dict, or its JSON text/bytes) durably and apply it; returns what it did.

        Never raises for bad payloads: they are stored and recorded as ignored (``malformed``). Raises only when
        the database itself fails (then the server should answer 5xx, and Label Studio's event is lost:
        :meth:`catch_up` recovers it).
        """
        started = time.perf_counter()
        raw, body, parse_error = _decode_payload(payload, self.max_json_depth)
        action = body.get("action") if isinstance(body, Mapping) else None
        action = action if isinstance(action, str) else None
        project = project_id_of(body) if isinstance(body, Mapping) else None
        item = _PendingEvent(
            stored_payload(raw, self.max_event_bytes), body, parse_error, action, project, origin
        )
        with self._pending_lock:
            self._pending.append(item)
            leads = not self._leading
            self._leading = True
        if not leads:
            item.woken.wait()  # stored by a leader, or handed the lead
        if not item.done:
            self._lead()
        if item.error is not None:
            raise item.error
        assert item.event_id is not None and item.outcome is not None
        parsed = body if item.parse_error is None and isinstance(body, Mapping) else None
        return EventOutcome(
            item.event_id, action, project, item.outcome, item.reason, time.perf_counter() - started, parsed
        )

    def _lead(self) -> None:
        """Group commit: the leader stores every event queued so far in one transaction (one fsync), wakes their
        threads, and hands the lead to the first event queued meanwhile. Each waiting thread is woken once; waiting
        on the write lock instead, the waiters of a batch woke one after another to find their event stored, a
        convoy that cost more CPU than storing the events (docs/learning-loop.md, "Less CPU per webhook")."""
        batch: list[_PendingEvent] = []
        try:
            with (
                self._write_lock
            ):  # taken before the batch: what queues while another writer holds it joins it
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._store_batch(batch)
        finally:
            for item in batch:
                if item.outcome is None and item.error is None:  # the leader was interrupted
                    item.error = RuntimeError("storing the event was interrupted")
                item.done = True
                item.woken.set()
            with self._pending_lock:
                if self._pending:
                    self._pending[0].woken.set()  # not done: it leads the next batch
                else:
                    self._leading = False

    def _store_batch(self, batch: list[_PendingEvent]) -> None:
        """Insert and apply queued events in one transaction (the caller holds the write lock).

        One event that fails costs the others nothing: the batch is first stored as is, and only when an event
        fails is it rolled back and stored again with each event in a savepoint of its own, the failed one stored
        as ignored. Savepoints on every event were two statements more per webhook, each a release of the GIL
        that the leader had to win back from the request threads (docs/learning-loop.md, "One writer connection").
        """
        conn = self._connections.writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # ids are given here, not by the INSERT, so that an event is applied under its id (the change
                # sequence of what it changes) and inserted once with its outcome: one statement fewer each
                first_id = self._last_event_id(conn) + 1
                try:
                    for offset, item in enumerate(batch):
                        self._store_one(conn, item, first_id + offset)
                except Exception as e:
                    if _database_failure(e):
                        raise
                    conn.execute("ROLLBACK")
                    self._configs.clear()
                    for item in batch:
                        item.event_id, item.outcome, item.reason = None, None, None
                    conn.execute("BEGIN IMMEDIATE")
                    first_id = self._last_event_id(conn) + 1  # another process may have written meanwhile
                    for offset, item in enumerate(batch):
                        self._store_isolated(conn, item, first_id + offset)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._configs.clear()
                raise
            conn.execute("COMMIT")
            self._group_commits += 1
            self._group_committed_events += len(batch)
        except Exception as e:  # the database itself failed: no event of the batch is stored
            for item in batch:
                item.error, item.event_id, item.outcome = e, None, None
        for item in batch:
            item.done = True

    def group_commit_counts(self) -> tuple[int, int]:
        """(transactions, events) of this process's group commits so far: events / transactions is how many
        webhooks shared a commit, the more the cheaper each (docs/learning-loop.md, "Threads for a burst")."""
        # read without the write lock, which a catch-up may hold for seconds: a scrape of /metrics must not wait
        # for it, and a pair read between the two increments is off by one batch until the next scrape
        return self._group_commits, self._group_committed_events

    @staticmethod
    def _last_event_id(db: sqlite3.Connection) -> int:
        """The largest events id ever given (AUTOINCREMENT never gives one again, deleted or not)."""
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _store_isolated(self, db: sqlite3.Connection, item: _PendingEvent, event_id: int) -> None:
        db.execute("SAVEPOINT event")
        try:
            self._store_one(db, item, event_id)
        except Exception as e:
            db.execute("ROLLBACK TO event")
            self._configs.clear()
            if _database_failure(e):
                raise
            logger.warning("event %s could not be applied and is stored as ignored: %r", item.action, e)
            try:
                self._insert_event(db, item, event_id, "ignored", f"malformed: {type(e).__name__}: {e}")
            except Exception as refused:
                db.execute("ROLLBACK TO event")
                if _database_failure(refused):
                    raise
                item.error, item.event_id, item.outcome = refused, None, None
        db.execute("RELEASE event")

    def _insert_event(
        self, db: sqlite3.Connection, item: _PendingEvent, event_id: int, outcome: str, reason: str | None
    ) -> None:
        """Insert the event's row (raw payload, outcome and reason) and note them on the item."""
        stored = item.stored
        action = None if item.action is None else _storable(item.action)
        reason = None if reason is None else _storable(reason)
        db.execute(
            "INSERT INTO events (id, project, action, origin, received_at, payload, payload_bytes, payload_sha256, "
            "payload_truncated, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, item.project, action, item.origin, time.time(), stored.text, stored.length, stored.sha256,
             int(stored.truncated), outcome, reason),
        )  # fmt: skip
        item.event_id, item.outcome, item.reason = event_id, outcome, reason

    def _store_one(self, db: sqlite3.Connection, item: _PendingEvent, event_id: int) -> None:
        outcome: str
        reason: str | None
        if item.parse_error is not None:
            outcome, reason = "ignored", f"malformed: {item.parse_error}"
        else:
            assert isinstance(item.body, Mapping)
            try:
                outcome, reason = self._apply(db, event_id, item.project, item.action, item.body)
            except MalformedEvent as e:
                outcome, reason = "ignored", f"malformed: {e}"
        self._insert_event(db, item, event_id, outcome, reason)

    def _apply(
        self, db: sqlite3.Connection, event_id: int, project: int | None, action: str | None, body: Mapping
    ) -> tuple[str, str | None]:
        if action is None:
            raise MalformedEvent("the payload has no 'action'")
        if action == TRAIN_ACTION:
            return "retrain", None
        if action not in (*UPSERT_ACTIONS, DELETE_ACTION):
            return "acknowledged", f"action {action} does not concern labels"
        if project is None:
            raise MalformedEvent(f"{action} payload names no project")
        if action == DELETE_ACTION:
            changed = sum(self._tombstone(db, project, i, event_id) for i in deleted_ids(body))
            return ("applied", None) if changed else ("duplicate", "already deleted")
        config = labeling_config_of(body.get("project")) or self.project_config(project, db)
        if config is not None:
            self._remember_config(db, project, config)
        record = annotation_record(body.get("annotation"), config)
        text = task_text(body.get("task"), config)
        if text is not None:
            self._put_texts(db, project, [(record.task_id, text)])
        result = self._upsert(db, project, record, event_id)
        if result in ("created", "updated"):
            return "applied", record.ignored_reason
        if result == "unchanged":
            return "duplicate", None
        return "ignored", result

    def _upsert(self, db: sqlite3.Connection, project: int, record: AnnotationRecord, seq: int) -> str:
        """Apply one annotation version: ``created``, ``updated``, ``unchanged``, ``stale`` or ``deleted``."""
        values = (
            record.task_id, record.label, record.ignored_reason, record.updated_at_us, record.created_at_us,
            record.completed_by, int(record.ground_truth), seq, project, record.annotation_id,
        )  # fmt: skip
        created = db.execute(
            "INSERT INTO annotations (task_id, label, ignored_reason, updated_at_us, created_at_us, "
            "completed_by, ground_truth, change_seq, project, annotation_id) VALUES (?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (project, annotation_id) DO NOTHING",
            values,
        )
        if created.rowcount == 1:  # a new annotation (the common case) costs one statement
            return "created"
        row = db.execute(
            "SELECT updated_at_us, deleted FROM annotations WHERE project = ? AND annotation_id = ?",
            (project, record.annotation_id),
        ).fetchone()
        stored_at, deleted = row
        if deleted:
            return "deleted"
        if stored_at is not None and record.updated_at_us < stored_at:
            return "stale"
        if stored_at is not None and record.updated_at_us == stored_at:
            return "unchanged"
        db.execute(
            "UPDATE annotations SET task_id = ?, label = ?, ignored_reason = ?, updated_at_us = ?, "
            "created_at_us = ?, completed_by = ?, ground_truth = ?, change_seq = ? "
            "WHERE project = ? AND annotation_id = ?",
            values,
        )
        return "updated"

    def _tombstone(self, db: sqlite3.Connection, project: int, annotation_id: int, seq: int) -> bool:
        """Mark an annotation deleted (creating a tombstone for an id not seen yet); True if anything changed."""
        cursor = db.execute(
            "UPDATE annotations SET deleted = 1, change_seq = ? WHERE project = ? AND annotation_id = ? "
            "AND deleted = 0",
            (seq, project, annotation_id),
        )
        if cursor.rowcount:
            return True
        cursor = db.execute(
            "INSERT OR IGNORE INTO annotations (project, annotation_id, deleted, change_seq) VALUES (?, ?, 1, ?)",
            (project, annotation_id, seq),
        )
        return bool(cursor.rowcount)

    # ---- catch-up from Label Studio's API

    def catch_up(
        self,
        project: int,
        annotations: Iterable[Mapping[str, Any]],
        *,
        texts: Mapping[int, str] | None = None,
        config: LabelingConfig | None = None,
        complete: bool = True,
    ) -> CatchUpResult:
        """Apply annotations as listed by Label Studio's API (same rules as webhooks), in one transaction.

        ``complete``: the list is every annotation of the project, so a stored live annotation missing from it
        was deleted while the backend did not listen, and gets a tombstone. ``texts`` maps task ids to texts.
        """
        items = list(annotations)
        with self._transaction() as db:
            config = config or self.project_config(project, db)
            if config is not None:
                self._remember_config(db, project, config)
            cursor = db.execute(
                "INSERT INTO events (project, action, origin, received_at, payload, outcome) "
                "VALUES (?, 'CATCH_UP', 'catch_up', ?, ?, 'applied')",
                (project, time.time(), json.dumps({"n_annotations": len(items), "complete": complete})),
            )
            seq = int(cursor.lastrowid or 0)
            counts = {"created": 0, "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
            malformed = 0
            seen: set[int] = set()
            for item in items:
                try:
                    record = annotation_record(item, config)
                    db.execute("SAVEPOINT annotation")  # one annotation that fails to apply costs no other
                    try:
                        change = self._upsert(db, project, record, seq)
                    except Exception as e:
                        db.execute("ROLLBACK TO annotation")
                        db.execute("RELEASE annotation")
                        if _database_failure(e):
                            raise
                        raise MalformedEvent(f"{type(e).__name__}: {e}") from e
                    db.execute("RELEASE annotation")
                except MalformedEvent as e:
                    malformed += 1
                    logger.warning("catch-up of project %s: skipped an annotation: %s", project, e)
                    continue
                seen.add(record.annotation_id)
                counts[change] += 1
            if texts:
                self._put_texts(db, project, [(t, s) for t, s in texts.items() if isinstance(s, str)])
            tombstoned = 0
            if complete:
                live = db.execute(
                    "SELECT annotation_id FROM annotations WHERE project = ? AND deleted = 0", (project,)
                ).fetchall()
                for (annotation_id,) in live:
                    if annotation_id not in seen:
                        tombstoned += self._tombstone(db, project, annotation_id, seq)
            result = CatchUpResult(
                created=counts["created"], updated=counts["updated"], unchanged=counts["unchanged"],
                ignored=counts["stale"] + counts["deleted"], deleted=tombstoned, malformed=malformed,
            )  # fmt: skip
            db.execute("UPDATE events SET reason = ? WHERE id = ?", (json.dumps(result.__dict__), seq))
        return result

    # ---- project configuration and task texts

    def _remember_config(self, db: sqlite3.Connection, project: int, config: LabelingConfig) -> None:
        if self._configs.get(project) == config:
            return
        self._configs[project] = config
        db.execute(
            "INSERT OR REPLACE INTO projects (project, classes, data_key, from_name) VALUES (?, ?, ?, ?)",
            (project, json.dumps(list(config.classes)), config.data_key, config.from_name),
        )

    def project_config(self, project: int, db: sqlite3.Connection | None = None) -> LabelingConfig | None:
        """The classes and text key last seen in a payload of this project (None if never seen)."""
        row = (
            (db or self._connection())
            .execute("SELECT classes, data_key, from_name FROM projects WHERE project = ?", (project,))
            .fetchone()
        )
        return None if row is None else LabelingConfig(tuple(json.loads(row[0])), row[1], row[2])

    def set_config(self, project: int, config: LabelingConfig) -> None:
        """Set a project's classes and text key (e.g. from the server's parsed labeling config)."""
        with self._transaction() as db:
            self._remember_config(db, project, config)

    def set_texts(self, project: int, texts: Mapping[int, str]) -> None:
        """Remember task texts (e.g. those the server predicted), so that labels can be scored when training.
        A task id that is no Label Studio id, or a text that is not a string, is skipped (and logged)."""
        with self._transaction() as db:
            self._put_texts(db, project, list(texts.items()))

    def _put_texts(self, db: sqlite3.Connection, project: int, items: Sequence[tuple[Any, Any]]) -> None:
        rows = []
        for task_id, text in items:
            checked = label_studio_id(task_id)
            if checked is None or not isinstance(text, str):
                logger.warning(
                    "project %s: task %r: no text stored (not an id or not a text)", project, task_id
                )
                continue
            copy = stored_text(text, self.max_text_chars)
            rows.append((project, checked, copy.text, copy.length, copy.sha256, int(copy.truncated)))
        db.executemany(
            "INSERT OR REPLACE INTO tasks (project, task_id, text, text_chars, text_sha256, text_truncated) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    def task_record(self, project: int, task_id: int) -> dict[str, Any] | None:
        """The stored text of a task with the original's length (characters) and sha256, and whether the stored
        copy was cut (None when the store has no text of it)."""
        row = (
            self._connection()
            .execute(
                "SELECT text, text_chars, text_sha256, text_truncated FROM tasks WHERE project = ? AND task_id = ?",
                (project, task_id),
            )
            .fetchone()
        )
        if row is None or row[0] is None:
            return None
        return {"text": row[0], "chars": row[1], "sha256": row[2], "truncated": bool(row[3])}

    # ---- the served predictions (for routing and band counts)

    def record_predictions(
        self,
        project: int,
        task_ids: Sequence[int],
        scores: Sequence[float | None] | np.ndarray,
        model_version: str | None = None,
    ) -> None:
        """Remember each task's latest served score (None: no prediction), replacing the previous one. A task id
        that is no Label Studio id is skipped (and logged)."""
        values = [None if s is None or not np.isfinite(s) else float(s) for s in scores]
        if len(values) != len(task_ids):
            raise ValueError(f"got {len(values)} scores for {len(task_ids)} tasks")
        rows = []
        now = time.time()
        for task_id, score in zip(task_ids, values, strict=True):
            checked = label_studio_id(int(task_id) if isinstance(task_id, np.integer) else task_id)
            if checked is None:
                logger.warning(
                    "project %s: task %r: no score stored (not a Label Studio id)", project, task_id
                )
                continue
            rows.append((project, checked, score, model_version, now))
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO predictions (project, task_id, score, model_version, predicted_at) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def predicted_scores(self, project: int, unlabeled_only: bool = False) -> dict[int, float | None]:
        """The latest served score of each predicted task (optionally only tasks without a live label)."""
        query = "SELECT task_id, score FROM predictions WHERE project = ?"
        if unlabeled_only:
            query += (
                " AND task_id NOT IN (SELECT task_id FROM annotations WHERE project = ? AND deleted = 0 "
                "AND label IS NOT NULL AND task_id IS NOT NULL)"
            )
        args = (project, project) if unlabeled_only else (project,)
        return {int(t): s for t, s in self._connection().execute(query, args).fetchall()}

    def texts(self, project: int) -> dict[int, str]:
        """Every task text the store has seen for a project (from predictions, webhooks and catch-ups)."""
        rows = self._connection().execute(
            "SELECT task_id, text FROM tasks WHERE project = ? AND text IS NOT NULL", (project,)
        )
        return {int(t): str(s) for t, s in rows.fetchall()}

    # ---- why a label was asked for

    def mark_requests(
        self,
        project: int,
        task_ids: Sequence[int],
        reason: RequestReason,
        model_version: str | None = None,
        inclusion_probabilities: Sequence[float] | np.ndarray | None = None,
        sampler: str | None = None,
    ) -> list[int]:
        """Record that the backend asked humans to label these tasks (``calibration`` or ``review``).

        Tasks that already have a live label are skipped (their label was not asked for); a task marked before
        keeps its first mark. A calibration sample needs each task's inclusion probability in (0, 1]. Returns
        the task ids that were marked.
        """
        if reason not in ("calibration", "review"):
            raise ValueError(f"reason must be 'calibration' or 'review', got {reason!r}")
        ids = [int(t) for t in task_ids]
        if inclusion_probabilities is None:
            if reason == "calibration":
                raise ValueError("a calibration sample needs the inclusion probability of each task")
            probabilities: list[float | None] = [None] * len(ids)
        else:
            p = np.asarray(inclusion_probabilities, dtype=np.float64)
            if p.shape != (len(ids),):
                raise ValueError(
                    f"got {p.shape[0] if p.ndim else 0} inclusion probabilities for {len(ids)} tasks"
                )
            if not np.isfinite(p).all() or (p <= 0).any() or (p > 1 + 1e-12).any():
                raise ValueError("inclusion probabilities must lie in (0, 1]")
            probabilities = [float(v) for v in np.minimum(p, 1.0)]
        now = time.time()
        marked: list[int] = []
        with self._transaction() as db:
            labeled = {
                row[0]
                for row in db.execute(
                    "SELECT DISTINCT task_id FROM annotations WHERE project = ? AND deleted = 0 AND label IS NOT NULL",
                    (project,),
                )
            }
            for task_id, probability in zip(ids, probabilities, strict=True):
                if task_id in labeled:
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO requests (project, task_id, reason, model_version, "
                    "inclusion_probability, sampler, requested_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (project, task_id, reason, model_version, probability, sampler, now),
                )
                if cursor.rowcount:
                    marked.append(task_id)
        return marked

    def mark_auto_annotation(
        self,
        project: int,
        annotation_id: int,
        task_id: int,
        updated_at_us: int | None,
        model_version: str | None = None,
    ) -> None:
        """Record an annotation the backend made itself from its prediction (auto-accept): its label has source
        ``auto`` as long as nobody edits it (a later ``updated_at`` makes it a human's label again)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO auto_annotations (project, annotation_id, task_id, updated_at_us, "
                "model_version) VALUES (?, ?, ?, ?, ?)",
                (project, int(annotation_id), int(task_id), updated_at_us, model_version),
            )

    def auto_annotated_tasks(self, project: int) -> set[int]:
        """Tasks the backend annotated itself (auto-accept), edited since or not."""
        rows = self._connection().execute(
            "SELECT DISTINCT task_id FROM auto_annotations WHERE project = ?", (project,)
        )
        return {int(r[0]) for r in rows.fetchall()}

    def requested_tasks(self, project: int, reason: RequestReason) -> list[int]:
        """Task ids marked for ``reason`` (labeled or not)."""
        rows = self._connection().execute(
            "SELECT task_id FROM requests WHERE project = ? AND reason = ? ORDER BY task_id",
            (project, reason),
        )
        return [int(r[0]) for r in rows]

    # ---- reading labels

    def labels(self, project: int) -> LabeledTasks:
        """A snapshot of one label per labeled task, with its source (see :class:`LabeledTasks`)."""
        conn = self._connection()
        conn.execute("BEGIN")  # one consistent read snapshot
        try:
            watermark = self._watermark(conn, project)
            rows = conn.execute(
                """
                WITH ranked AS (
                    SELECT a.*, ROW_NUMBER() OVER (
                        PARTITION BY task_id ORDER BY ground_truth DESC, updated_at_us DESC, annotation_id DESC
                    ) AS rank
                    FROM annotations a
                    WHERE project = ? AND deleted = 0 AND label IS NOT NULL
                )
                SELECT r.task_id, r.label, r.annotation_id, r.updated_at_us, t.text,
                       c.inclusion_probability, c.model_version, v.model_version,
                       CASE WHEN x.annotation_id IS NOT NULL THEN 'auto'
                            WHEN c.task_id IS NOT NULL THEN 'calibration'
                            WHEN v.task_id IS NOT NULL THEN 'review' ELSE 'annotator' END
                FROM ranked r
                LEFT JOIN auto_annotations x ON x.project = ? AND x.annotation_id = r.annotation_id
                    AND (x.updated_at_us IS NULL OR x.updated_at_us >= r.updated_at_us)
                LEFT JOIN tasks t ON t.project = ? AND t.task_id = r.task_id
                LEFT JOIN requests c ON c.project = ? AND c.task_id = r.task_id AND c.reason = 'calibration'
                LEFT JOIN requests v ON v.project = ? AND v.task_id = r.task_id AND v.reason = 'review'
                WHERE r.rank = 1
                ORDER BY r.task_id
                """,
                (project, project, project, project, project),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        n = len(rows)
        return LabeledTasks(
            task_ids=np.array([r[0] for r in rows], dtype=np.int64).reshape(n),
            labels=np.array([r[1] for r in rows], dtype=object).reshape(n),
            sources=np.array([r[8] for r in rows], dtype=object).reshape(n),
            inclusion_probabilities=np.array(
                [np.nan if r[5] is None else r[5] for r in rows], dtype=np.float64
            ).reshape(n),
            texts=[r[4] for r in rows],
            annotation_ids=np.array([r[2] for r in rows], dtype=np.int64).reshape(n),
            updated_at_us=np.array([r[3] for r in rows], dtype=np.int64).reshape(n),
            watermark=watermark,
            request_versions=[r[6] or r[7] for r in rows],
        )

    def _watermark(self, conn: sqlite3.Connection, project: int) -> int:
        row = conn.execute("SELECT MAX(change_seq) FROM annotations WHERE project = ?", (project,)).fetchone()
        return int(row[0] or 0)

    def watermark(self, project: int) -> int:
        """The change sequence of the project's latest label change (0 when none)."""
        return self._watermark(self._connection(), project)

    def changes_since(self, project: int, watermark: int) -> int:
        """How many annotations changed (created, updated, deleted) after ``watermark``."""
        row = (
            self._connection()
            .execute(
                "SELECT COUNT(*) FROM annotations WHERE project = ? AND change_seq > ?", (project, watermark)
            )
            .fetchone()
        )
        return int(row[0])

    def annotation(self, project: int, annotation_id: int) -> dict[str, Any] | None:
        """The stored state of one annotation (None if never seen)."""
        conn = self._connection()
        cursor = conn.execute(
            "SELECT * FROM annotations WHERE project = ? AND annotation_id = ?", (project, annotation_id)
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cursor.description], row, strict=True))

    def counts(self, project: int) -> dict[str, Any]:
        """Labels by source, annotations without a label by reason, ignored events by reason, event totals."""
        labeled = self.labels(project)
        by_source = {source: int((labeled.sources == source).sum()) for source in LABEL_SOURCES}
        conn = self._connection()
        unlabeled = dict(
            conn.execute(
                "SELECT ignored_reason, COUNT(*) FROM annotations WHERE project = ? AND deleted = 0 "
                "AND ignored_reason IS NOT NULL GROUP BY ignored_reason",
                (project,),
            ).fetchall()
        )
        events = conn.execute(
            "SELECT reason, COUNT(*) FROM events WHERE (project = ? OR project IS NULL) AND outcome = 'ignored' "
            "GROUP BY reason",
            (project,),
        ).fetchall()
        ignored_events: dict[str, int] = {}
        for reason, count in events:
            key = str(reason).split(":", 1)[0] if reason else "unknown"
            ignored_events[key] = ignored_events.get(key, 0) + int(count)
        deleted = conn.execute(
            "SELECT COUNT(*) FROM annotations WHERE project = ? AND deleted = 1", (project,)
        ).fetchone()[0]
        totals = dict(
            conn.execute(
                "SELECT origin, COUNT(*) FROM events WHERE project = ? GROUP BY origin", (project,)
            ).fetchall()
        )
        requested = dict(
            conn.execute(
                "SELECT reason, COUNT(*) FROM requests WHERE project = ? GROUP BY reason", (project,)
            ).fetchall()
        )
        return {
            "labeled_tasks": len(labeled),
            "labels_by_source": by_source,
            "annotations_without_label": {str(k): int(v) for k, v in unlabeled.items()},
            "ignored_events": ignored_events,
            "deleted_annotations": int(deleted),
            "events": {str(k): int(v) for k, v in totals.items()},
            "requested": {str(k): int(v) for k, v in requested.items()},
        }

    def events(
        self, project: int | None = None, limit: int = 100, payloads: bool = False
    ) -> list[dict[str, Any]]:
        """The latest stored events (newest first), with their stored payloads' size (bytes), sha256 and whether
        the stored copy was cut; with ``payloads``, the stored payload too."""
        conn = self._connection()
        columns = "id, project, action, origin, received_at, outcome, reason, payload_bytes, payload_sha256"
        columns += ", payload_truncated" + (", payload" if payloads else "")
        query = f"SELECT {columns} FROM events"
        args: tuple[Any, ...] = ()
        if project is not None:
            query += " WHERE project = ?"
            args = (project,)
        cursor = conn.execute(query + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            row["payload_truncated"] = bool(row["payload_truncated"])
        return rows


@dataclass
class _PendingEvent:
    """A webhook waiting for the group commit, and what storing it gave."""

    stored: StoredText
    body: Any
    parse_error: str | None
    action: str | None
    project: int | None
    origin: str
    woken: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    event_id: int | None = None
    outcome: str | None = None
    reason: str | None = None
    error: Exception | None = None


def _database_failure(error: BaseException) -> bool:
    """Whether an error is the database's own (disk, lock timeout, corruption), not one event's data."""
    return (
        isinstance(error, sqlite3.OperationalError | sqlite3.InternalError)
        or type(error) is sqlite3.DatabaseError
    )


def _decode_payload(payload: Any, max_depth: int = MAX_JSON_DEPTH) -> tuple[bytes | str, Any, str | None]:
    """(raw payload to store, parsed body, parse error or None); total: never raises."""
    try:
        return _decode(payload, max_depth)
    except Exception as e:  # an input shape nobody foresaw is one malformed event, not a failed request
        return repr(type(payload)), None, f"unreadable payload: {type(e).__name__}: {e}"


def _decode(payload: Any, max_depth: int) -> tuple[bytes | str, Any, str | None]:
    too_deep = f"nested deeper than {max_depth} levels"
    if isinstance(payload, bytes | bytearray):
        raw: bytes | str = bytes(payload)
        text = bytes(payload).decode("utf-8", errors="replace")
    elif isinstance(payload, str):
        raw = text = payload
    else:
        if exceeds_depth(payload, max_depth):
            return f"<a {type(payload).__name__} {too_deep}>", None, too_deep
        try:
            dumped = json.dumps(payload, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as e:
            return repr(type(payload)), None, f"the payload is not JSON-serializable: {e}"
        error = (
            None
            if isinstance(payload, Mapping)
            else f"the payload is a {type(payload).__name__}, not an object"
        )
        return dumped, payload, error
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        return raw, None, f"not JSON: {e}"
    except RecursionError:
        return raw, None, too_deep
    if not isinstance(body, Mapping):
        return raw, None, f"the payload is a JSON {type(body).__name__}, not an object"
    if text_may_exceed_depth(text, max_depth) and exceeds_depth(body, max_depth):
        return raw, None, too_deep
    return raw, body, None
