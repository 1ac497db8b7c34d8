"""Which version serves each project, and what its retrains score with.

:meth:`ProjectServing.model_source` is the predictor's ``model_source``: a project is served by its version store's
serving version once a retrain promoted one (or an admin rolled back to one); before that, and after a rollback to
an ``initial`` version, by the out-of-task model, which is exactly what the ``initial`` version holds
(:meth:`ProjectServing.sync_initial` saves the predictor's out-of-task model as it; one source of truth). A
retrain's ``score_fn`` asks the same LLMs through the same SQLite score cache as the predictor, with the same
prompts, so labels of predicted tasks cost no LLM call.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ls_backend.loop import LabelStore, ModelVersion, VersionError, VersionStore, Worker, retrain_lock
from ls_backend.loop.tuning import tune_in_subprocess
from ls_backend.server.predictor import ProjectSetup
from ls_backend.server.project_registry import ProjectLoop, ProjectRegistry

if TYPE_CHECKING:
    from ls_backend.server.predictor import CascadePredictor

logger = logging.getLogger(__name__)


def served_name(version: ModelVersion) -> str:
    """The model version predictions carry: an ``initial`` version serves under its out-of-task name."""
    if version.status == "initial" and version.config.get("oot_version"):
        return str(version.config["oot_version"])
    return version.name


class ProjectServing:
    """The versions that serve the registered projects, and the retrain workers that make new ones.

    Args:
        predictor: the server's cascade predictor (its LLMs, prompts, score cache and out-of-task models).
        registry: the registered projects.
    """

    def __init__(self, predictor: CascadePredictor, registry: ProjectRegistry) -> None:
        self.predictor = predictor
        self.registry = registry

    def model_source(self, setup: ProjectSetup) -> ModelVersion | None:
        """The promoted (or rolled back to) version serving the project, None while its ``initial``
        (out-of-task) version serves, since the predictor serves that one itself."""
        number = setup.ls_project
        loop = self.registry.get(number) if number is not None else None
        if loop is None:
            return None
        try:
            version = loop.versions.serving()
        except VersionError:
            return None
        return None if version.status == "initial" else version

    def version_names(self, number: int) -> list[str]:
        """The project's versions that served or may serve (not rejected), as predictions name them."""
        loop = self.registry.get(number)
        if loop is None:
            return []
        names = []
        serving = loop.versions.serving_name()
        for name in loop.versions.names():
            try:
                version = loop.versions.load(name)
            except VersionError:
                continue
            if version.status != "rejected" or name == serving:
                names.append(served_name(version))
        return names

    def sync_initial(self, loop: ProjectLoop) -> ModelVersion | None:
        """Make the project's ``initial`` version the predictor's out-of-task model (saved when there is none, or
        when the initial one serving was made for another out-of-task model, e.g. before the description came)."""
        oot = self.predictor.oot_model(loop.setup)
        if loop.initial_synced == oot.version:
            return None
        with retrain_lock(loop.versions.lock_path, timeout_s=60.0) as acquired:
            if not acquired:
                return None
            serving: ModelVersion | None
            try:
                serving = loop.versions.serving()
            except VersionError:
                serving = None
            if serving is not None and (
                serving.status != "initial" or serving.config.get("oot_version") == oot.version
            ):
                loop.initial_synced = oot.version
                return None
            version = loop.versions.save(
                oot.model,
                status="initial",
                trigger="initial",
                config={"oot_version": oot.version, "oot_kind": oot.kind, "notes": oot.notes},
                labels={"n_labels": 0, "by_source": {}},
            )
            loop.versions.promote(version.name, action="initial", note=oot.version)
            loop.initial_synced = oot.version
            logger.info("project %s: initial version %s is %s", loop.number, version.name, oot.version)
            return version

    def score(self, loop: ProjectLoop, k: int, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trainer's ``score_fn``: LLM k's answers, class logits and costs for these texts, through the
        predictor's score cache with the project's prompts (what /predict asked costs nothing again)."""
        setup = loop.setup
        slots = self.predictor.slots(setup.config)
        prompt = self.predictor.prompt(setup, slots[k])
        cache = self.predictor.score_cache(setup.config)
        batch_size = setup.config.cascade_settings.batch_size
        answers, logits, costs, _ = self.predictor.score_texts(slots[k], prompt, texts, cache, batch_size)
        return answers, logits, costs

    def new_loop(
        self, number: int, setup: ProjectSetup, store: LabelStore, server_busy: Callable[[], bool]
    ) -> ProjectLoop:
        """A new project's loop: its version store and its retrain worker (not started). The worker reads the
        project's setup at each retrain (a /setup with new ``extra_params`` applies to the next one); its bin-edge
        tuning runs in a separate process that pauses while the server answers a request
        (``loop.tuning_process``)."""
        versions = VersionStore(self.registry.model_dir, number)
        holder: list[ProjectLoop] = []
        settings = setup.config.learning
        # the lambdas look self.score and self.sync_initial up at each call: a benchmark may swap them
        worker = Worker(
            number,
            store,
            versions,
            lambda k, texts: self.score(holder[0], k, texts),
            settings.loop_config(),
            poll_s=settings.poll_s,
            before_retrain=lambda: self.sync_initial(holder[0]),
            idle_stop_s=settings.idle_stop_s,
            tune=functools.partial(tune_in_subprocess, pause_while=server_busy)
            if settings.tuning_process
            else None,
            embed_fn=lambda texts: self.predictor.embed_for_retrain(holder[0].setup.config, texts),
        )
        loop = ProjectLoop(number, setup, versions, worker)
        holder.append(loop)
        return loop
