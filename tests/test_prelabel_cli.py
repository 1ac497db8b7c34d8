"""``lwc prelabel``'s client side: a server that breaks off a reply is waited for, not a crash."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from ls_backend.cli import CLIError
from ls_backend.cli.prelabel import follow, request_json


def _serve(replies: list[bytes]) -> tuple[str, threading.Thread]:
    """A one-connection-per-reply HTTP server that sends each raw reply in turn and then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def loop() -> None:
        for reply in replies:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(reply)
            conn.close()
        listener.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


def _reply(body: bytes, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length or len(body)}\r\n\r\n"
    )
    return head.encode() + body


JOB: dict[str, Any] = {
    "id": 1, "kind": "prelabel", "total": 2, "processed": 0, "status": "running",
    "llm_calls": 0, "cached": 0, "failed": 0,
}  # fmt: skip


def test_a_reply_cut_short_is_a_server_that_does_not_answer() -> None:
    url, thread = _serve([_reply(b'{"job": {', length=603)])
    with pytest.raises(CLIError, match="broke off its reply"):
        request_json(url, "GET", "/jobs/1")
    thread.join(5)


def test_follow_waits_through_a_reply_cut_short() -> None:
    done = json.dumps({"job": {**JOB, "processed": 2, "status": "done", "llm_calls": 2}}).encode()
    url, thread = _serve([_reply(b"", length=603), _reply(b"not json"), _reply(done)])
    final = follow(url, dict(JOB), interval=0.01, reconnect_s=30)
    assert final["status"] == "done" and final["processed"] == 2
    thread.join(5)
