"""All of the learning loop's background work, in one design.

- **One task thread** (``lwc-learning-loop``) runs what the request threads hand it (:meth:`BackgroundWork.submit`:
  a catch-up, a retrain-due check after a burst of labels, Label Studio's views, an auto-accept), one task at a
  time and in order, so that a webhook's answer never waits for Label Studio or the label store's writers.
- **Periodic tasks** (:meth:`~BackgroundWork.every_tick`: due catch-ups, promotions to refresh, the state of RQ
  jobs) run on that thread at least once a second, even while tasks keep coming: a pre-annotation job hands the
  loop one task per batch, and a due catch-up or a promotion must not wait for a quiet second.
- **Delayed tasks** (:meth:`~BackgroundWork.submit_after`: trying again a little later) wait on that thread too,
  rather than in timer threads of their own.
- **Retrain workers**: each project's :class:`~ls_backend.loop.Worker` keeps its own thread (a retrain takes
  minutes and must not hold up the tasks above; the version store's lock makes retrains of a project exclude each
  other), which stops when idle. They are started here (:meth:`~BackgroundWork.start_worker`), woken at every tick
  (an admin's ``retrain.request`` of an idle-stopped worker) and stopped with the rest.

Every task that fails is logged with its traceback and costs only itself: the thread goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

from ls_backend.loop import Worker

logger = logging.getLogger(__name__)

Task = Callable[[], object]


class BackgroundWork:
    """The learning loop's task thread, its periodic and delayed tasks, and the projects' retrain workers.

    Args:
        tick_s: the periodic tasks run at least this often (seconds).
        name: the task thread's name.
    """

    def __init__(self, tick_s: float = 1.0, name: str = "lwc-learning-loop") -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s!r}")
        self.tick_s = tick_s
        self.name = name
        self._queue: queue.Queue[Task | None] = queue.Queue()  # None: stop
        self._periodic: list[tuple[str, Task]] = []
        self._delayed: list[tuple[float, int, Task]] = []  # (due time.monotonic(), order, task): a heap
        self._order = itertools.count()
        self._workers: list[Worker] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---- what runs

    def every_tick(self, what: str, task: Task) -> None:
        """Run ``task`` at every tick (``what`` names it in the log when it fails)."""
        self._periodic.append((what, task))

    def submit(self, task: Task) -> None:
        """Run ``task`` on the task thread (one task at a time, in order)."""
        self._queue.put(task)

    def submit_after(self, delay_s: float, task: Task) -> None:
        """Run ``task`` on the task thread once ``delay_s`` seconds have passed (at the first tick after)."""
        with self._lock:
            heapq.heappush(self._delayed, (time.monotonic() + delay_s, next(self._order), task))

    def start_worker(self, worker: Worker) -> None:
        """Start a project's retrain worker; it is woken at every tick and stopped by :meth:`stop`."""
        with self._lock:
            if worker not in self._workers:
                self._workers.append(worker)
        worker.start()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the tasks submitted so far are done (tests); delayed tasks not yet due are not waited for."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    # ---- life cycle

    def start(self) -> BackgroundWork:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self

    def stop(self, worker_timeout: float = 5.0) -> None:
        """Stop the task thread after the task in hand, and each worker after its retrain in progress."""
        self._queue.put(None)
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.stop(timeout=worker_timeout)

    # ---- the task thread

    def _run(self) -> None:
        last_tick = time.monotonic()
        while True:
            quiet = False
            try:
                task = self._queue.get(timeout=self.tick_s)
            except queue.Empty:
                task, quiet = None, True
            if task is None and not quiet:
                return
            if quiet or time.monotonic() - last_tick >= self.tick_s:
                self._tick()
                last_tick = time.monotonic()
            if task is not None:
                self._safely("a background task", task)

    def _tick(self) -> None:
        for what, task in self._periodic:
            self._safely(what, task)
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            self._safely(f"waking the retrain worker of project {worker.project}", worker.wake)
        for task in self._due_delayed():
            self._safely("a delayed task", task)

    def _due_delayed(self) -> list[Task]:
        now = time.monotonic()
        due = []
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                due.append(heapq.heappop(self._delayed)[2])
        return due

    @staticmethod
    def _safely(what: str, task: Task) -> None:
        try:
            task()
        except Exception:
            logger.exception("learning loop: %s failed", what)
