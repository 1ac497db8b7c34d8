"""The projects whose learning loop runs in this server process: registered by /setup, by the first /predict with
tasks, or restored at start from the ``project.json`` files of the model directory; at most
``limits.max_projects`` of them, so that calls naming ever new project ids cannot grow threads and folders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ls_backend.files import atomic_write_text
from ls_backend.labelstudio import LabelStudioAccess, parse_label_config
from ls_backend.loop import Thresholds, VersionStore, Worker
from ls_backend.server.config import BackendConfig
from ls_backend.server.predictor import ProjectSetup

logger = logging.getLogger(__name__)

PROJECT_FILE = "project.json"


class ProjectLimitError(RuntimeError):
    """A new project would exceed ``limits.max_projects`` (the server answers 503)."""


@dataclass
class ProjectLoop:
    """The learning loop of one Label Studio project in this server process."""

    number: int
    setup: ProjectSetup
    versions: VersionStore
    worker: Worker
    access: LabelStudioAccess | None = None
    label_studio_ready: tuple[float, bool, bool] | None = None  # (review threshold, views, sampling) applied
    project_model_version: str | None = None  # the model version set as the project's in Label Studio
    initial_synced: str | None = None
    catch_up_at: float = math.inf  # time.monotonic() when a pending catch-up is due (inf: none pending)
    # the serving pointer and the name it serves under, as last seen (a change by a promotion or rollback
    # starts a refresh job)
    serving_seen: tuple[str | None, str | None] | None = None
    catch_up_without_access: bool = False  # a catch-up found no Label Studio access (said once)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def thresholds(self) -> Thresholds:
        settings = self.setup.config.learning
        return Thresholds(settings.review_threshold, settings.auto_accept_threshold)


@dataclass(frozen=True)
class Registration:
    """What registering a setup did: the project's loop, whether it is new, and whether its routing thresholds
    changed (its predicted tasks must be routed again)."""

    loop: ProjectLoop
    created: bool
    thresholds_changed: bool


MakeLoop = Callable[[int, ProjectSetup], ProjectLoop]
"""Builds a new project's loop (its version store and retrain worker, not started)."""


class ProjectRegistry:
    """The registered projects by numeric id, and their ``project.json`` files.

    Args:
        config: the server's configuration (``model_dir``; ``limits.max_projects``).
        make_loop: builds a new project's loop.
    """

    def __init__(self, config: BackendConfig, make_loop: MakeLoop) -> None:
        self.config = config
        self.model_dir = config.resolved_model_dir()
        self.max_projects = config.limits.max_projects
        self.make_loop = make_loop
        self._projects: dict[int, ProjectLoop] = {}
        self._lock = threading.Lock()

    def numbers(self) -> list[int]:
        with self._lock:
            return sorted(self._projects)

    def get(self, number: int) -> ProjectLoop | None:
        with self._lock:
            return self._projects.get(number)

    def loops(self) -> list[ProjectLoop]:
        with self._lock:
            return list(self._projects.values())

    def project_dir(self, number: int) -> Path:
        """The project's folder in the model directory (its versions, locks and ``project.json``)."""
        loop = self.get(number)
        return loop.versions.directory if loop is not None else self.model_dir / f"project-{number}"

    def register(self, setup: ProjectSetup, access: LabelStudioAccess | None = None) -> Registration | None:
        """The project's loop, created on first sight (worker not started); remembers the latest setup on disk so
        that a restarted server knows the project. None when the setup has no numeric project id;
        :class:`ProjectLimitError` when the project is new and ``limits.max_projects`` are registered."""
        number = setup.ls_project
        if number is None:
            return None
        with self._lock:
            loop = self._projects.get(number)
            created = loop is None
            if loop is None:
                if len(self._projects) >= self.max_projects:
                    raise ProjectLimitError(
                        f"this backend already serves {len(self._projects)} projects (limits.max_projects); "
                        f"project {number} is not registered"
                    )
                loop = self._projects[number] = self.make_loop(number, setup)
        with loop.lock:
            before = loop.thresholds
            loop.setup = setup
            loop.access = access or loop.access
            loop.worker.config = setup.config.learning.loop_config()
        self.save(loop)
        return Registration(loop, created, not created and loop.thresholds != before)

    def save(self, loop: ProjectLoop) -> None:
        """Write the project's ``project.json`` (unless it says the same already); a failure costs only a restart's
        knowledge of the project, so it is logged, not raised."""
        setup = loop.setup
        record = {
            "project": setup.project_id,
            "label_config": setup.label_config_xml,
            "extra_params": setup.extra_params,
            "question": setup.question,
            "question_source": setup.question_source,
            "review_threshold": loop.thresholds.review,
            "auto_accept_threshold": loop.thresholds.auto_accept,
            "loop": loop.worker.config.to_dict(),
        }
        path = loop.versions.directory / PROJECT_FILE
        text = json.dumps(record, indent=1)
        with contextlib.suppress(OSError):
            if path.exists() and path.read_text(encoding="utf-8") == text:
                return
        try:
            atomic_write_text(path, text)
        except OSError as e:
            logger.warning("project %s: cannot save %s: %s", loop.number, path, e)

    def restore(self, register: Callable[[ProjectSetup], ProjectLoop | None]) -> list[ProjectLoop]:
        """Register (through ``register``) every project the model directory knows, the most recently set up
        first, should there be more than ``limits.max_projects``; returns their loops. A file that cannot be read
        costs that project's loop until its next /setup, not the server."""
        files = sorted(self.model_dir.glob(f"project-*/{PROJECT_FILE}"), key=lambda p: -p.stat().st_mtime)
        restored = []
        for path in files:
            try:
                loop = register(self.read_setup(path))
                if loop is None:
                    raise ValueError(f"the project id in {path} is not numeric")
            except ProjectLimitError:
                logger.warning(
                    "%d projects in %s; restored the %d most recent (limits.max_projects)",
                    len(files),
                    self.model_dir,
                    self.max_projects,
                )
                break
            except Exception as e:
                logger.warning("cannot restore the learning loop from %s: %s", path, e)
                continue
            logger.info("learning loop of project %s restored from %s", loop.number, path)
            restored.append(loop)
        return restored

    def read_setup(self, path: Path) -> ProjectSetup:
        """The setup a ``project.json`` remembers, under the server's configuration of today."""
        record = json.loads(path.read_text(encoding="utf-8"))
        label_config = str(record["label_config"])
        extra = dict(record.get("extra_params") or {})
        config = self.config.merged(extra)
        question = config.question or str(record["question"])
        source = "config" if config.question else str(record.get("question_source", "default"))
        return ProjectSetup(
            str(record["project"]),
            parse_label_config(label_config),
            config,
            question,
            source,
            label_config_xml=label_config,
            extra_params=extra,
        )
