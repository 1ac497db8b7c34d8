"""Observability: a project's learning-loop status as one JSON-able dict (``lwc status``, a /status route)."""

from __future__ import annotations

from typing import Any

from ls_backend.loop.store import LabelStore
from ls_backend.loop.trainer import LoopConfig, lock_is_free, read_retrain_status
from ls_backend.loop.versions import VersionError, VersionStore


def loop_status(
    project: int, store: LabelStore, versions: VersionStore, config: LoopConfig | None = None
) -> dict[str, Any]:
    """Labels by source, unlabeled annotations and ignored events by reason, the serving version with its held-out
    ACE and cascade cost, whether a retrain runs, labels since the latest version, and the retrain history."""
    config = config or LoopConfig()
    counts = store.counts(project)
    serving: dict[str, Any] | None = None
    error = None
    try:
        version = versions.serving()
        serving = {
            "name": version.name,
            "status": version.status,
            "created_at": version.created_at,
            "n_labels": version.labels.get("n_labels", 0),
            "holdout_ace": version.metrics.get("holdout_ace"),
            "holdout_accuracy": version.metrics.get("holdout_accuracy"),
            "holdout_cost_per_item": version.metrics.get("holdout_cost_per_item"),
            "fallback": versions.last_fallback,
        }
    except VersionError as e:
        error = str(e)
    latest = versions.latest()
    watermark = int(latest.labels.get("watermark", 0)) if latest is not None else 0
    history = []
    for entry in versions.list():
        history.append(
            {
                key: entry.get(key)
                for key in (
                    "name",
                    "status",
                    "created_at",
                    "trigger",
                    "n_labels",
                    "serving",
                    "evaluation",
                    "error",
                )
                if key in entry
            }
        )
    return {
        "project": project,
        **counts,
        "serving": serving,
        "serving_error": error,
        "retrain_running": not lock_is_free(versions.lock_path),
        "last_retrain": read_retrain_status(versions),
        "label_changes_since_latest_version": store.changes_since(project, watermark),
        "retrain_every": config.retrain_every,
        "versions": history,
        "promotions": versions.history(),
    }
