"""After /predict: predicted tasks routed to humans or accepted, and Label Studio's project kept in step.

The texts and served scores of predicted tasks go to the label store; tasks scoring under the project's
``loop.review_threshold`` are marked for ``review``, and with ``loop.auto_accept_threshold`` the confident ones are
annotated in Label Studio as the backend's own labels (never trained on). Through the Label Studio adapter
(``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``, else the token /setup carries) the project gets the Data
Manager views "Needs review" and "Calibration sample", uncertainty sampling, and the serving model version as its
own. Everything that talks to Label Studio runs on the background task thread, never in a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ls_backend.labelstudio import (
    CALIBRATION_VIEW,
    REVIEW_VIEW,
    UNCERTAINTY_SAMPLING,
    LabelStudioConnector,
    LabelStudioProject,
    error_text,
    review_view_filters,
    task_id_filters,
)
from ls_backend.loop import LabelStore, assign_bands, band_counts
from ls_backend.loop.events import parse_timestamp_us
from ls_backend.server.background import BackgroundWork
from ls_backend.server.predictor import ProjectSetup
from ls_backend.server.project_registry import ProjectLoop
from ls_backend.server.serving import ProjectServing

logger = logging.getLogger(__name__)

MODEL_VERSION_RETRY_S = 2.0
"""Wait before setting a project's model version again: right after a /predict, Label Studio may not have saved
the predictions that make the version known to it yet."""


class Router:
    """Routing of predicted tasks and the project's settings and views in Label Studio.

    Args:
        store: the label store.
        background: where the calls to Label Studio run.
        label_studio: makes a project's Label Studio adapter.
        serving: the projects' versions (the ``initial`` one is saved after a project's first predictions).
        register: registers a project's setup (a /predict may be the first the backend hears of a project).
    """

    def __init__(
        self,
        store: LabelStore,
        background: BackgroundWork,
        label_studio: LabelStudioConnector,
        serving: ProjectServing,
        register: Callable[[ProjectSetup], ProjectLoop | None],
    ) -> None:
        self.store = store
        self.background = background
        self.label_studio_api = label_studio
        self.serving = serving
        self.register = register

    def label_studio(self, loop: ProjectLoop) -> LabelStudioProject | None:
        return self.label_studio_api.project(loop.number, loop.access)

    # ---- predicted tasks

    def after_predict(
        self,
        setup: ProjectSetup,
        task_ids: Sequence[int],
        texts: Sequence[str],
        scores: Sequence[float | None],
        model_version: str,
        choices: Sequence[str | None] | None = None,
    ) -> dict[str, int]:
        """Store the predicted tasks' texts and scores, mark the review band, and (when ``auto_accept_threshold``
        is set) annotate the auto-accept band in Label Studio in the background; returns the batch's band counts.
        ``choices``: the predicted class of each task (needed for auto-accept)."""
        if not task_ids:
            return {}
        loop = self.register(setup)
        if loop is None:
            return {}
        number = loop.number
        self.store.set_texts(number, dict(zip(task_ids, texts, strict=True)))
        self.store.record_predictions(number, task_ids, scores, model_version)
        bands = assign_bands(np.array(scores, dtype=object), loop.thresholds)
        review = [t for t, b in zip(task_ids, bands, strict=True) if b == "review"]
        if review:
            self.store.mark_requests(number, review, "review", model_version)
        self.background.submit(lambda: self._after_predict_background(loop, model_version))
        if choices is not None and loop.thresholds.auto_accept is not None:
            accepted = [
                (int(t), c)
                for t, c, b in zip(task_ids, choices, bands, strict=True)
                if b == "auto_accept" and c is not None
            ]
            if accepted:
                self.background.submit(lambda: self.auto_accept(loop, accepted, model_version))
        return band_counts(bands)

    def _after_predict_background(self, loop: ProjectLoop, model_version: str) -> None:
        try:
            self.serving.sync_initial(loop)
        except Exception:
            logger.exception("project %s: saving the initial version failed", loop.number)
        self.prepare_label_studio(loop)
        self.set_project_model_version(loop, model_version)

    def auto_accept(self, loop: ProjectLoop, accepted: Sequence[tuple[int, str]], model_version: str) -> int:
        """Annotate confidently predicted tasks with their prediction in Label Studio, and record each annotation
        as the backend's own (source ``auto``: never trained on). Tasks with a label are skipped."""
        label_studio = self.label_studio(loop)
        if label_studio is None:
            logger.warning("project %s: auto-accept needs Label Studio access", loop.number)
            return 0
        done = {int(t) for t in self.store.labels(loop.number).task_ids}
        done |= self.store.auto_annotated_tasks(loop.number)
        made = 0
        for task_id, choice in accepted:
            if task_id in done:
                continue
            try:
                created = label_studio.annotate(task_id, loop.setup.label.result(choice))
            except Exception as e:
                logger.warning("project %s: auto-accept of task %s failed: %s", loop.number, task_id, e)
                continue
            updated_at_us = parse_timestamp_us(created.updated_at) if created.updated_at else None
            self.store.mark_auto_annotation(
                loop.number, created.annotation_id, task_id, updated_at_us, model_version
            )
            made += 1
        if made:
            logger.info("project %s: auto-accepted %d predictions of %s", loop.number, made, model_version)
        return made

    def reroute(self, loop: ProjectLoop) -> list[int]:
        """After a threshold change: mark for review the predicted, unlabeled tasks whose latest score is now under
        the review threshold (the "Needs review" view shows them to annotators from now on)."""
        review = loop.thresholds.review
        scores = self.store.predicted_scores(loop.number, unlabeled_only=True)
        low = [t for t, score in scores.items() if score is None or score < review]
        marked = self.store.mark_requests(loop.number, low, "review") if low else []
        logger.info(
            "project %s: review threshold %g: %d more tasks to review", loop.number, review, len(marked)
        )
        return marked

    # ---- the project in Label Studio

    def after_setup(self, loop: ProjectLoop, model_version: str) -> None:
        """At /setup: make sure Label Studio's project points at the version the backend serves (background)."""
        if loop.project_model_version != model_version:
            self.background.submit(lambda: self.set_project_model_version(loop, model_version, retries=0))

    def set_project_model_version(self, loop: ProjectLoop, model_version: str, retries: int = 5) -> bool:
        """Make ``model_version`` the project's model version in Label Studio: the predictions annotators see,
        and the ones Label Studio 1.23.2's ``predictions_score`` column (so the "Needs review" filter) averages
        (``annotate_predictions_score`` filters on the project's model version; with an empty one it matches no
        prediction, so the view would stay empty)."""
        if not loop.setup.config.learning.views or loop.project_model_version == model_version:
            return True
        label_studio = self.label_studio(loop)
        if label_studio is None:
            return False
        try:
            label_studio.set_model_version(model_version)
        except Exception as e:
            logger.info(
                "project %s: cannot set its model version %s yet: %s",
                loop.number,
                model_version,
                error_text(e),
            )
            if retries > 0:
                self.background.submit_after(
                    MODEL_VERSION_RETRY_S,
                    lambda: self.set_project_model_version(loop, model_version, retries - 1),
                )
            return False
        loop.project_model_version = model_version
        return True

    @staticmethod
    def label_studio_wanted(loop: ProjectLoop) -> tuple[float, bool, bool]:
        """The review threshold, views and sampling the project's settings ask of Label Studio."""
        settings = loop.setup.config.learning
        return (loop.thresholds.review, settings.views, settings.uncertainty_sampling)

    def prepare_label_studio(self, loop: ProjectLoop) -> bool:
        """Create the "Needs review" view and set uncertainty sampling (once per threshold; idempotent)."""
        settings = loop.setup.config.learning
        wanted = self.label_studio_wanted(loop)
        if loop.label_studio_ready == wanted or not (settings.views or settings.uncertainty_sampling):
            return True
        label_studio = self.label_studio(loop)
        if label_studio is None:
            return False
        try:
            if settings.uncertainty_sampling:
                label_studio.use_uncertainty_sampling()
            if settings.views:
                label_studio.ensure_unfiltered_view()
                label_studio.upsert_view(REVIEW_VIEW, review_view_filters(loop.thresholds.review))
        except Exception as e:
            logger.warning("project %s: cannot set up views/sampling in Label Studio: %s", loop.number, e)
            return False
        loop.label_studio_ready = wanted
        logger.info(
            "project %s: Label Studio has the %r view (score < %g) and %s",
            loop.number,
            REVIEW_VIEW,
            loop.thresholds.review,
            UNCERTAINTY_SAMPLING if settings.uncertainty_sampling else "its own sampling",
        )
        return True

    def update_calibration_view(self, loop: ProjectLoop) -> int | None:
        """Show every task of the project's calibration sample in the "Calibration sample" view; its id."""
        if not loop.setup.config.learning.views:
            return None
        label_studio = self.label_studio(loop)
        if label_studio is None:
            return None
        ids = self.store.requested_tasks(loop.number, "calibration")
        try:
            label_studio.ensure_unfiltered_view()
            return label_studio.upsert_view(CALIBRATION_VIEW, task_id_filters(ids))
        except Exception as e:
            logger.warning("project %s: cannot update the %r view: %s", loop.number, CALIBRATION_VIEW, e)
            return None
