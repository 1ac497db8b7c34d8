"""Who may call the backend: HTTP basic auth on every endpoint but /health, and for /webhook alternatively the
``X-Webhook-Secret`` header (docs/server.md, "Authentication"). Both compare in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac

SECRET_HEADER = "X-Webhook-Secret"
AUTH_REQUIRED = "this backend requires HTTP basic auth (set it in Label Studio's model settings)"


def has_webhook_secret(given: str | None, secret: str) -> bool:
    """Whether the ``X-Webhook-Secret`` value given matches the server's (in constant time)."""
    return hmac.compare_digest((given or "").encode(), secret.encode())


def has_basic_auth(header: str | None, expected: tuple[str, str]) -> bool:
    """Whether an ``Authorization: Basic ...`` header carries the expected user and password (constant time)."""
    user, password = _basic_credentials(header)
    user_ok = hmac.compare_digest((user or "").encode(), expected[0].encode())
    pass_ok = hmac.compare_digest(password.encode(), expected[1].encode())
    return user is not None and user_ok and pass_ok


def _basic_credentials(header: str | None) -> tuple[str | None, str]:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None, ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None, ""
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else (None, "")
