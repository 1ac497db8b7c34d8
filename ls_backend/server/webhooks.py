"""``POST /webhook`` as a plain WSGI endpoint in front of the Flask app.

Label Studio gives a webhook 1 s and can send hundreds at once (an import of annotations, a team labeling in
parallel). Storing an event durably costs well under a millisecond of CPU once commits are grouped, while
Flask's request machinery around it (request context, hooks, routing, ``jsonify``) cost about as much again:
served by Flask, the CPU per webhook was about twice the store's (docs/learning-loop.md, "Less CPU per webhook").
So this one endpoint is answered here, with the same rules as every other one:

- the same authentication (HTTP basic auth, or the ``X-Webhook-Secret`` header; docs/server.md);
- the same errors: JSON ``{"error": ..., "status": code}``, 400 for a body that is not a JSON object or has no
  ``action``, 401, 413 for a body over the server's limit, 500 (logged) when the label store itself fails;
- the same bookkeeping: the request counts as in flight (a retrain's tuning process pauses meanwhile), and the
  ``lwc_http_requests_total`` / ``lwc_http_request_duration_seconds`` metrics under the endpoint ``/webhook``.

Every other path goes to the Flask app unchanged; another method on ``/webhook`` gets 405.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ls_backend.loop.events import exceeds_depth, text_may_exceed_depth
from ls_backend.server.auth import AUTH_REQUIRED, SECRET_HEADER, has_basic_auth, has_webhook_secret

if TYPE_CHECKING:
    from ls_backend.server.app import BackendState

logger = logging.getLogger(__name__)

PATH = "/webhook"
_SECRET_ENVIRON_KEY = "HTTP_" + SECRET_HEADER.upper().replace("-", "_")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class WebhookError(Exception):
    """A webhook answered with an error status (the message is the JSON reply's ``error``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WebhookEndpoint:
    """The WSGI app of the server: ``POST /webhook`` answered here, everything else by ``app``."""

    def __init__(self, state: BackendState, app: WSGIApp, max_body_bytes: int) -> None:
        self.state = state
        self.app = app
        self.max_body_bytes = max_body_bytes
        # looked up once: .labels() takes the metric's lock and checks the labels on every call
        self._answered_ok = state.metrics.requests.labels(endpoint=PATH, status="200")
        self._latency = state.metrics.latency.labels(endpoint=PATH)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        started = time.perf_counter()
        state = self.state
        with state.lock:
            state.in_flight += 1
        try:
            status, reply, headers = self._answer(environ)
        finally:
            with state.lock:
                state.in_flight -= 1
        body = json.dumps(reply).encode()
        if status == 200:
            self._answered_ok.inc()
        else:
            state.metrics.requests.labels(endpoint=PATH, status=str(status)).inc()
        self._latency.observe(time.perf_counter() - started)
        start_response(
            _STATUS_LINES.get(status, f"{status} Error"),
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
        )
        return [body]

    def _answer(self, environ: Mapping[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        method = environ.get("REQUEST_METHOD")
        if method != "POST":
            message = f"{method} is not allowed on {PATH}: Label Studio POSTs its webhooks"
            return 405, {"error": message, "status": 405}, [("Allow", "POST")]
        try:
            self._authenticate(environ)
            return 200, self._receive(self._body(environ)), []
        except WebhookError as e:
            logger.warning("POST %s -> %d: %s", PATH, e.status, e.message)
            headers = [("WWW-Authenticate", 'Basic realm="label-with-confidence"')] if e.status == 401 else []
            return e.status, {"error": e.message, "status": e.status}, headers
        except Exception as e:  # the label store failed: 5xx, so Label Studio's event is known to be lost
            logger.exception("POST %s failed", PATH)
            return 500, {"error": f"{type(e).__name__}: {e}", "status": 500}, []

    def _authenticate(self, environ: Mapping[str, Any]) -> None:
        state = self.state
        secret_ok = bool(state.webhook_secret) and has_webhook_secret(
            environ.get(_SECRET_ENVIRON_KEY), str(state.webhook_secret)
        )
        if state.auth is not None:
            if not secret_ok and not has_basic_auth(environ.get("HTTP_AUTHORIZATION"), state.auth):
                raise WebhookError(401, AUTH_REQUIRED)
        elif state.webhook_secret and not secret_ok:
            raise WebhookError(401, f"missing or wrong {SECRET_HEADER} header")

    def _body(self, environ: Mapping[str, Any]) -> bytes:
        stream = environ.get("wsgi.input")
        length_text = environ.get("CONTENT_LENGTH") or ""
        try:
            length = int(length_text) if length_text.strip() else None
        except ValueError:
            raise WebhookError(400, f"invalid Content-Length {length_text!r}") from None
        if length is not None and length > self.max_body_bytes:
            raise WebhookError(413, f"request body larger than {self.max_body_bytes} bytes")
        if stream is None or length == 0:
            return b""
        if length is None:  # chunked: read what the server has dechunked, if it says the stream ends
            if not environ.get("wsgi.input_terminated"):
                return b""
            raw = stream.read(self.max_body_bytes + 1)
            if len(raw) > self.max_body_bytes:
                raise WebhookError(413, f"request body larger than {self.max_body_bytes} bytes")
            return bytes(raw)
        return bytes(stream.read(length))

    def _receive(self, raw: bytes) -> dict[str, Any]:
        state = self.state
        outcome = None
        if state.learning is not None:  # stored (durably) before anything else, even what is refused below
            outcome = state.learning.record_webhook(raw)
        # the store parsed it (with the same depth limit); a body it could not read gets its 400 here
        body = dict(outcome.body) if outcome is not None and outcome.body is not None else self._parse(raw)
        action = body.get("action")
        if action is None:
            raise WebhookError(400, "missing 'action' (the webhook event, e.g. ANNOTATION_CREATED)")
        if not isinstance(action, str):
            raise WebhookError(400, f"'action' must be a string, got {type(action).__name__}")
        state.descriptions.remember_from_payload(body)
        reply: dict[str, Any] = {"status": "ok", "action": action}
        if outcome is not None:
            reply["outcome"] = outcome.outcome
            if outcome.reason:
                reply["reason"] = outcome.reason
        # DEBUG, not INFO: at INFO a line per webhook cost 7-17% of a burst's CPU (scripts/bench_webhooks.py), and
        # the label store's events table and /metrics already record every one
        logger.debug("webhook %s: %s", action, reply.get("outcome", "acknowledged"))
        return reply

    def _parse(self, raw: bytes) -> dict[str, Any]:
        """The body as a JSON object, or 400 saying why not."""
        if not raw.strip():
            raise WebhookError(400, "the request body is empty; expected a JSON object")
        depth = self.state.config.limits.max_json_depth
        too_deep = f"the request body is nested deeper than {depth} levels (limits.max_json_depth)"
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise WebhookError(400, f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise WebhookError(400, too_deep) from None
        if not isinstance(body, dict):
            raise WebhookError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        if text_may_exceed_depth(raw, depth) and exceeds_depth(body, depth):
            raise WebhookError(400, too_deep)
        return body


_STATUS_LINES = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    405: "405 Method Not Allowed",
    413: "413 Request Entity Too Large",
    500: "500 Internal Server Error",
}
