"""A project's learning loop as ``/status`` and ``lwc status`` show it: ``loop_status`` plus the routing
thresholds, the band counts, the latest job and the name the serving version serves under."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ls_backend.loop import LabelStore, VersionError, assign_bands, band_counts
from ls_backend.loop.jobs import Job, JobStore
from ls_backend.loop.status import loop_status
from ls_backend.server.project_registry import ProjectLoop
from ls_backend.server.serving import served_name


def routing_bands(loop: ProjectLoop, store: LabelStore) -> dict[str, int]:
    """How many predicted tasks fall in each band (by their latest served score)."""
    scores = list(store.predicted_scores(loop.number).values())
    return band_counts(assign_bands(np.array(scores, dtype=object), loop.thresholds))


def project_status(
    loop: ProjectLoop, store: LabelStore, job_store: JobStore, sync_job: Callable[[Job], Job]
) -> dict[str, Any]:
    """``loop_status`` plus the routing thresholds, band counts and the latest job (its state synced first)."""
    status = loop_status(loop.number, store, loop.versions, loop.worker.config)
    status["thresholds"] = {"review": loop.thresholds.review, "auto_accept": loop.thresholds.auto_accept}
    status["bands"] = routing_bands(loop, store)
    latest = job_store.latest(loop.number)
    status["job"] = sync_job(latest).to_dict() if latest is not None else None
    if status.get("serving"):
        with contextlib.suppress(VersionError):
            status["serving"]["served_as"] = served_name(loop.versions.serving())
    return status
