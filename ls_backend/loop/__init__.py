"""The learning loop: durable labels from Label Studio webhooks, routing to humans, calibration samples, refit
and retrain in the background, model versions. See docs/learning-loop.md.

The server's entry points: :class:`LabelStore` (``record_event`` for /webhook, ``catch_up``), :class:`VersionStore`
(``serving()`` for /setup and /predict, ``list()`` for /versions), :class:`Worker` (background retrains),
:func:`assign_bands` (review routing) and :func:`draw_calibration_sample`.
"""

from ls_backend.loop.events import AnnotationRecord, LabelingConfig, MalformedEvent
from ls_backend.loop.model import ServedPredictions, ServingModel, threshold_policy
from ls_backend.loop.routing import (
    BANDS,
    CalibrationDraw,
    Thresholds,
    assign_bands,
    band_counts,
    draw_calibration_sample,
)
from ls_backend.loop.store import CatchUpResult, EventOutcome, LabeledTasks, LabelStore
from ls_backend.loop.trainer import (
    LoopConfig,
    RetrainResult,
    Worker,
    request_retrain_file,
    retrain,
    retrain_lock,
)
from ls_backend.loop.versions import ModelVersion, VersionError, VersionStore
from ls_backend.loop.weighting import calibration_weights

__all__ = [
    "BANDS",
    "AnnotationRecord",
    "CalibrationDraw",
    "CatchUpResult",
    "EventOutcome",
    "LabelStore",
    "LabeledTasks",
    "LabelingConfig",
    "LoopConfig",
    "MalformedEvent",
    "ModelVersion",
    "RetrainResult",
    "ServedPredictions",
    "ServingModel",
    "Thresholds",
    "VersionError",
    "VersionStore",
    "Worker",
    "assign_bands",
    "band_counts",
    "calibration_weights",
    "draw_calibration_sample",
    "request_retrain_file",
    "retrain",
    "retrain_lock",
    "threshold_policy",
]
