"""Catching up from Label Studio's API: every annotation of a project, applied to the label store.

Label Studio sends each webhook once, with a 1 s timeout, and never again: a label made while the backend was
down or slow reaches it only through the API. The server calls :func:`catch_up_from_label_studio` at start and on
START_TRAINING. Label Studio being down is not an error here: it returns None and logs why.
"""

from __future__ import annotations

import logging

from ls_backend.labelstudio import LabelStudioProject
from ls_backend.loop.events import LabelingConfig
from ls_backend.loop.store import CatchUpResult, LabelStore

logger = logging.getLogger(__name__)


def catch_up_from_label_studio(
    store: LabelStore, label_studio: LabelStudioProject, config: LabelingConfig | None = None
) -> CatchUpResult | None:
    """Apply every annotation Label Studio holds for the project to the store (a complete listing: annotations
    the store has but Label Studio no longer has are tombstoned). None when Label Studio cannot be read."""
    project = label_studio.project
    config = config or store.project_config(project)
    try:
        fetched = label_studio.list_annotations(config.data_key if config else None)
    except Exception as e:  # the API client raises many kinds (httpx, ApiError, ...): all mean "not now"
        logger.warning(
            "catch-up of project %s from Label Studio failed: %s: %s", project, type(e).__name__, e
        )
        return None
    result = store.catch_up(project, fetched.annotations, texts=fetched.texts, config=config, complete=True)
    logger.info("catch-up of project %s: %d tasks read; %s", project, fetched.n_tasks, result)
    return result
