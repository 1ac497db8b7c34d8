"""What the server remembers about Label Studio projects: their setup and their description.

Label Studio sends only the labeling config to ``/setup``; a project's description (the default question put
to the LLMs) is read from Label Studio's API in the background, through the Label Studio adapter
(:mod:`ls_backend.labelstudio`), when the backend has ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (or the
``hostname``/``access_token`` that ``/setup`` carries).
Webhook payloads carry the project's description too. Label Studio being down or refusing the key only costs
the description: the question then falls back to one built from the classes.
"""

from __future__ import annotations

import html
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ls_backend.labelstudio import LabelStudioAccess, fetch_project_texts
from ls_backend.loop.events import label_studio_id

logger = logging.getLogger(__name__)

DESCRIPTION_CHARS = 10_000
"""Longest project description remembered (the question put to the LLMs); longer ones are cut."""
_TAG = re.compile(r"<[^>]+>")


class ProjectIdError(ValueError):
    """A project id that is not Label Studio's ``"<id>.<created_at>"`` (or a plain id)."""


def parse_project_id(value: Any) -> tuple[str, int]:
    """Label Studio's project key ``"<id>.<created_at unix>"`` and its numeric id (a plain id is accepted).

    The id must be one Label Studio can have (a positive 64-bit integer) and the time ASCII digits: anything else
    is refused here, before the server registers or writes anything for the project."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProjectIdError(f"'project' must be a string like '3.1795875050', got {_short(value)}")
    key = str(value).strip()
    head, _, tail = key.partition(".")
    number = label_studio_id(head)
    if number is None or (tail and not (tail.isascii() and tail.isdigit() and len(tail) <= 20)):
        raise ProjectIdError(
            f"'project' must look like '<id>.<created_at>' (e.g. '3.1795875050'; the id a positive 64-bit "
            f"integer), got {_short(value)}"
        )
    return key, number


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def plain_text(markup: str) -> str:
    """A project description or instruction (may be HTML) as one line of plain text."""
    return " ".join(html.unescape(_TAG.sub(" ", markup)).split())


def fetch_description(access: LabelStudioAccess, project: int, timeout: float) -> str | None:
    """The project's description, else its instructions, from Label Studio (None when both are empty)."""
    texts = fetch_project_texts(access, project, timeout)
    for text in (texts.description, texts.instruction):
        if isinstance(text, str) and plain_text(text):
            return plain_text(text)
    return None


Fetcher = Callable[[LabelStudioAccess, int, float], "str | None"]


class ProjectDescriptions:
    """Project descriptions by numeric project id: from webhooks, or fetched from Label Studio in the background.

    Args:
        access: the configured Label Studio access (None: only what ``/setup`` carries, if anything).
        fetch: reads one project's description (default: :func:`fetch_description`).
        timeout: seconds one fetch may take.
        capacity: how many projects' descriptions are remembered (the least recently learned are forgotten, so
            calls naming ever new projects cannot grow it).
    """

    def __init__(
        self,
        access: LabelStudioAccess | None = None,
        fetch: Fetcher | None = None,
        timeout: float = 5.0,
        capacity: int = 10_000,
    ) -> None:
        self.access = access
        self.fetch = fetch or fetch_description
        self.timeout = timeout
        self.capacity = capacity
        self._known: OrderedDict[int, str | None] = OrderedDict()
        self._pending: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def remember(self, project: int, description: str | None, instruction: str | None = None) -> None:
        """Record what a webhook payload says about a project."""
        for text in (description, instruction):
            if isinstance(text, str) and plain_text(text):
                with self._lock:
                    self._set(project, plain_text(text))
                return
        with self._lock:
            if project not in self._known:
                self._set(project, None)

    def _set(self, project: int, description: str | None) -> None:
        """Remember a description (the caller holds the lock), forgetting the oldest beyond the capacity."""
        self._known[project] = None if description is None else description[:DESCRIPTION_CHARS]
        self._known.move_to_end(project)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)

    def remember_from_payload(self, payload: Mapping[str, Any]) -> None:
        project = payload.get("project")
        number = label_studio_id(project.get("id")) if isinstance(project, Mapping) else None
        if isinstance(project, Mapping) and number is not None:
            self.remember(number, project.get("description"), project.get("expert_instruction"))

    def prefetch(self, project: int, fallback: LabelStudioAccess | None = None) -> None:
        """Start reading a project's description unless it is known or being read (never blocks)."""
        access = self.access or fallback
        if access is None:
            return
        with self._lock:
            if project in self._known or project in self._pending or len(self._pending) >= self.capacity:
                return
            done = self._pending[project] = threading.Event()
        threading.Thread(
            target=self._fetch, args=(access, project, done), name=f"ls-project-{project}", daemon=True
        ).start()

    def _fetch(self, access: LabelStudioAccess, project: int, done: threading.Event) -> None:
        description: str | None = None
        try:
            description = self.fetch(access, project, self.timeout)
            logger.info("project %d: description read from Label Studio (%s)", project, bool(description))
        except Exception as e:  # Label Studio down, key refused, project gone: the question falls back
            logger.warning("project %d: could not read its description from %s: %s", project, access.url, e)
        with self._lock:
            # a failed read is not cached, so the next /setup tries again; a webhook may have answered meanwhile
            if description is not None:
                self._set(project, description)
            self._pending.pop(project, None)
        done.set()

    def get(self, project: int, wait: float = 0.0) -> str | None:
        """The project's description if known; waits up to ``wait`` seconds for a read in progress."""
        with self._lock:
            if project in self._known:
                return self._known[project]
            pending = self._pending.get(project)
        if pending is not None and wait > 0:
            pending.wait(wait)
        with self._lock:
            return self._known.get(project)
