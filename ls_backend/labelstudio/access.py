"""Where the backend reaches Label Studio's API, the client it reaches it with, and how the client's answers and
failures read as plain data.

label-studio-sdk is imported inside :func:`connect` only: importing the adapter costs nothing to the processes
that never call Label Studio (the CLI's reports, an RQ worker's start).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

URL_ENV = "LABEL_STUDIO_URL"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"


@dataclass(frozen=True)
class LabelStudioAccess:
    """Where the backend reads Label Studio's API: URL and API key (legacy token or personal access token)."""

    url: str
    api_key: str

    @classmethod
    def from_env(cls) -> LabelStudioAccess | None:
        url, key = os.environ.get(URL_ENV, "").strip(), os.environ.get(API_KEY_ENV, "").strip()
        return cls(url.rstrip("/"), key) if url and key else None


def connect(access: LabelStudioAccess, timeout: float = 10.0, max_retries: int | None = None) -> Any:
    """A label-studio-sdk client of ``access`` (``max_retries=0``: a Label Studio that is down fails at once
    instead of after the SDK's own retries)."""
    from label_studio_sdk.client import LabelStudio

    retries = {} if max_retries is None else {"max_retries": max_retries}
    return LabelStudio(base_url=access.url, api_key=access.api_key, timeout=timeout, **retries)


ClientFactory = Callable[[LabelStudioAccess], Any]
"""Makes a client from an access (default :func:`connect`; tests pass one that returns a fake client)."""


def as_dict(item: Any) -> dict[str, Any]:
    """An object the SDK returned (a pydantic model, or a dict from a fake client) as a plain dict; an empty
    reply (None) is an empty dict. :class:`TypeError` for anything else, so that an answer the adapter cannot read
    is never taken for an empty one (a catch-up would tombstone every annotation on it)."""
    if item is None:
        return {}
    if isinstance(item, Mapping):
        return dict(item)
    for method in ("model_dump", "dict"):
        dump = getattr(item, method, None)
        if callable(dump):
            return dict(dump())
    raise TypeError(f"cannot read a {type(item).__name__} from Label Studio as a dict")


def status_code(error: BaseException) -> int | None:
    """The HTTP status Label Studio answered a failed call with (None: no answer at all)."""
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(error: BaseException) -> bool:
    """Whether a failed call to Label Studio may succeed later: no answer at all (connection refused, timeout),
    a 5xx, 408 or 429. A 4xx otherwise is Label Studio's final word."""
    status = status_code(error)
    if status is not None:
        return status >= 500 or status in (408, 429)
    import httpx

    return isinstance(error, httpx.TransportError | OSError | TimeoutError)


def error_text(error: BaseException) -> str:
    """What Label Studio said about a refused call (the reply's body when there is one)."""
    return str(getattr(error, "body", error))
