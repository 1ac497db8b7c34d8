"""The burst clients of ``scripts/bench_webhooks.py`` (``ls_backend.benchmark.webhook_burst``) against a small
HTTP server on loopback: every request arrives whole, every answer is read whole and matched to its request, and
each latency is taken."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from ls_backend.benchmark.webhook_burst import CLIENTS, burst


class Echo(BaseHTTPRequestHandler):
    """Answers a POSTed JSON object with its ``n`` and the body's length, then closes (as the backend does for
    ``Connection: close``)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = json.dumps({"n": json.loads(body)["n"], "bytes": len(body), "outcome": "applied"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


class EchoServer(ThreadingHTTPServer):
    request_queue_size = 256  # a burst's connections all wait in the listen backlog (the default is 5)
    daemon_threads = True


@pytest.mark.parametrize("client", CLIENTS)
def test_a_burst_gets_every_answer_matched_to_its_request(client: str) -> None:
    server = EchoServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # bodies of different sizes, one larger than a socket buffer, so that sends and reads come in pieces
        payloads = [{"n": i, "pad": "x" * (i * 37 if i != 7 else 300_000)} for i in range(60)]
        latencies, answers, client_cpu = burst(
            f"http://127.0.0.1:{server.server_address[1]}/webhook", payloads, client
        )
    finally:
        server.shutdown()
        server.server_close()
    assert [status for status, _ in answers] == [200] * 60
    assert [body["n"] for _, body in answers] == list(range(60))
    assert [body["bytes"] for _, body in answers] == [len(json.dumps(p)) for p in payloads]
    assert np.isfinite(latencies).all() and (latencies > 0).all()
    assert client_cpu >= 0


def test_a_refused_connection_is_an_answer_of_status_0() -> None:
    server = EchoServer(("127.0.0.1", 0), Echo)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    latencies, answers, _ = burst(f"http://127.0.0.1:{port}/webhook", [{"n": 0}, {"n": 1}], "selector")
    assert [status for status, _ in answers] == [0, 0]
    assert all("error" in body for _, body in answers)
    assert np.isfinite(latencies).all()
