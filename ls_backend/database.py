"""The durable SQLite files of the learning loop (the label store, the jobs beside it): one connection per thread
and process, WAL, writers queued on a lock of the process, and a schema that only ever gains columns."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")


class ThreadConnections:
    """Connections to one SQLite file, one per thread and process (a connection must not cross threads or a fork).

    Each is in autocommit mode (transactions are explicit: ``BEGIN IMMEDIATE``), waits up to ``busy_timeout_ms``
    for a writer of another process, and uses WAL with the ``synchronous`` level given (``FULL`` makes each commit
    survive a power cut, ``NORMAL`` a crash of the process only). ``write_lock`` queues the writers of this
    process here rather than in SQLite's busy handler, whose sleeps (up to 100 ms each) let many waiting writers
    starve each other for seconds. The writes themselves go through one connection of the process (``writer``,
    used under ``write_lock`` only): a connection whose last write was another's finds its page cache stale and
    reads its pages again, as each batch of a burst of webhooks did, led by another thread (with the label store's
    batches stored without per-event savepoints: 1.35 to 1.10 ms of server CPU per webhook in a burst,
    docs/learning-loop.md, "One writer connection").
    """

    def __init__(
        self, path: str | os.PathLike[str], busy_timeout_ms: int = 10_000, synchronous: str = "FULL"
    ):
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {list(SYNCHRONOUS)}, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.synchronous = synchronous.upper()
        self.write_lock = threading.Lock()
        self._local = threading.local()
        self._writer: tuple[sqlite3.Connection, int] | None = None  # (connection, pid that opened it)

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use), for reads."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        conn = self._open(check_same_thread=True)
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def writer(self) -> sqlite3.Connection:
        """The process's connection for writes: the caller holds ``write_lock`` while it uses it."""
        if self._writer is None or self._writer[1] != os.getpid():
            self._writer = (self._open(check_same_thread=False), os.getpid())
        return self._writer[0]

    def _open(self, check_same_thread: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("%s: journal mode is %s, not WAL", self.path, mode)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    @contextmanager
    def transaction(self, on_rollback: Callable[[], None] | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``) on the writer connection, under the write lock; committed
        when the block ends, rolled back (and ``on_rollback`` called) when it raises."""
        with self.write_lock:
            conn = self.writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                if on_rollback is not None:
                    on_rollback()
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection and the writer (other threads' connections close when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None
        with self.write_lock:
            if self._writer is not None and self._writer[1] == os.getpid():
                self._writer[0].close()
            self._writer = None


def add_missing_columns(conn: sqlite3.Connection, columns: Iterable[tuple[str, str, str]]) -> None:
    """Bring a file made by an older version up to the current schema: each (table, column, declaration) is added
    where missing (columns are only ever added, so an older file always opens)."""
    for table, column, declaration in columns:
        if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            continue
        try:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.OperationalError as e:  # another process added it first
            if "duplicate column" not in str(e):
                raise
