"""Labels coming in from Label Studio: webhooks, and catch-ups from its API.

``POST /webhook`` -> :meth:`LabelIntake.record_webhook`: the event is stored in the label store (SQLite, WAL,
fsynced) before the server answers; anything slower (a catch-up, deciding on a retrain) runs on the background
task thread, so the answer stays far under Label Studio's 1 s webhook timeout. A catch-up (every annotation of the
project) runs at start and on START_TRAINING; Label Studio being down is logged and the catch-up is tried again
``loop.catch_up_retry_s`` later.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from ls_backend.labelstudio import LabelStudioConnector
from ls_backend.loop import EventOutcome, LabelingConfig, LabelStore
from ls_backend.loop.catch_up import catch_up_from_label_studio
from ls_backend.server.background import BackgroundWork
from ls_backend.server.project_registry import ProjectLoop, ProjectRegistry

logger = logging.getLogger(__name__)


class LabelIntake:
    """Webhooks and catch-ups into the label store, and the retrain workers told of new labels.

    Args:
        store: the label store.
        registry: the registered projects (a label of an unregistered project is stored, and trains nothing).
        background: where catch-ups and retrain-due checks run.
        label_studio: makes a project's Label Studio adapter.
    """

    def __init__(
        self,
        store: LabelStore,
        registry: ProjectRegistry,
        background: BackgroundWork,
        label_studio: LabelStudioConnector,
    ) -> None:
        self.store = store
        self.registry = registry
        self.background = background
        self.label_studio_api = label_studio
        self._changed: set[int] = set()  # projects whose labels changed since the last retrain-due check
        self._lock = threading.Lock()

    def record_webhook(self, payload: bytes | str | Mapping[str, Any]) -> EventOutcome:
        """Store the event durably (before the caller answers); what follows runs in the background."""
        outcome = self.store.record_event(payload)
        if outcome.project is None:
            return outcome
        if outcome.retrain_requested:
            self.background.submit(lambda: self._after_event(outcome))
        elif outcome.label_changed:
            # a burst of labels is one background task (a retrain-due check per project), not one per webhook
            with self._lock:
                first = not self._changed
                self._changed.add(outcome.project)
            if first:
                self.background.submit(self._notify_changed)
        return outcome

    def _notify_changed(self) -> None:
        with self._lock:
            projects, self._changed = self._changed, set()
        for number in sorted(projects):
            loop = self.registry.get(number)
            if loop is None:
                logger.info(
                    "labels of project %s stored; the project has no /setup yet, so no retrain", number
                )
            else:
                loop.worker.notify_labels()

    def _after_event(self, outcome: EventOutcome) -> None:
        assert outcome.project is not None
        loop = self.registry.get(outcome.project)
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
        self.background.submit(self.due_catch_ups)

    def due_catch_ups(self) -> None:
        """The catch-ups due now (a periodic task: one that failed is tried again when its retry is due)."""
        now = time.monotonic()
        for loop in self.registry.loops():
            if loop.catch_up_at <= now:
                self.catch_up(loop)

    def catch_up(self, loop: ProjectLoop) -> bool:
        """Apply every annotation Label Studio holds for the project; on failure, try again later."""
        label_studio = self.label_studio_api.project(loop.number, loop.access)
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
