"""Bursts of HTTP POSTs, each on a connection of its own, as Label Studio sends webhooks: the client of
``scripts/bench_webhooks.py``.

Two clients: ``selector`` opens every connection at once from one thread (non-blocking sockets) and sends each
request as soon as its connection is up, so that the client's own CPU (about 0.3 ms per request) leaves the cores to
the server it measures; ``threads`` POSTs each request from a thread of its own, released together by a barrier
(about 1 ms of CPU per request). Each latency is client-side, from the burst's release to the whole answer (the
server closes the connection), queueing included; a request that fails gets status 0 and its error.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from typing import Any

import numpy as np

CLIENTS = ("selector", "threads")


def burst(
    url: str, payloads: list[dict[str, Any]], client: str = "selector"
) -> tuple[np.ndarray, list[tuple[int, dict[str, Any]]], float]:
    """POST every payload at once, each on a connection of its own (as Label Studio sends webhooks): client-side
    seconds, replies, and the client's CPU seconds for the whole burst."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    requests = [http_request(host, path, json.dumps(p).encode()) for p in payloads]
    cpu_before = time.process_time()
    deliver = burst_selector if client == "selector" else burst_threads
    latencies, answers = deliver(host, int(port), requests)
    return latencies, answers, time.process_time() - cpu_before


def burst_selector(host: str, port: int, requests: list[bytes]) -> tuple[np.ndarray, list[tuple[int, dict]]]:
    """One thread, non-blocking sockets: every connection opened at once, each request sent as soon as its
    connection is up, each latency taken when its answer is complete (the server closes the connection)."""
    latencies = np.full(len(requests), np.nan)
    answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(requests)
    received = [bytearray() for _ in requests]
    sent = [0] * len(requests)
    with selectors.DefaultSelector() as selector:
        started = time.perf_counter()
        for i in range(len(requests)):
            opened = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            opened.setblocking(False)
            opened.connect_ex((host, port))
            selector.register(opened, selectors.EVENT_WRITE, i)
        open_connections = len(requests)
        deadline = started + 120
        while open_connections and time.perf_counter() < deadline:
            for key, events in selector.select(timeout=max(0.0, deadline - time.perf_counter())):
                connection, i = key.fileobj, key.data
                assert isinstance(connection, socket.socket)
                try:
                    if events & selectors.EVENT_WRITE:
                        sent[i] += connection.send(requests[i][sent[i] :])
                        if sent[i] == len(requests[i]):
                            selector.modify(connection, selectors.EVENT_READ, i)
                        continue
                    chunk = connection.recv(65536)
                    if chunk:
                        received[i] += chunk
                        continue
                    answers[i] = _answer(bytes(received[i]))
                except OSError as e:
                    answers[i] = (0, {"error": str(e)})
                latencies[i] = time.perf_counter() - started
                selector.unregister(connection)
                connection.close()
                open_connections -= 1
        for key in list(selector.get_map().values()):  # not answered within the deadline
            key.fileobj.close()  # type: ignore[union-attr]
    return latencies, answers


def burst_threads(host: str, port: int, requests: list[bytes]) -> tuple[np.ndarray, list[tuple[int, dict]]]:
    """Each request from a thread of its own, all released at once by a barrier."""
    barrier = threading.Barrier(len(requests))
    latencies = np.full(len(requests), np.nan)
    answers: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(requests)

    def deliver(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            answers[i] = _exchange(host, port, requests[i])
        except OSError as e:
            answers[i] = (0, {"error": str(e)})
        latencies[i] = time.perf_counter() - started

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return latencies, answers


def http_request(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _exchange(host: str, port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send one prepared request and read the whole answer (the server closes the connection)."""
    with socket.create_connection((host, port), timeout=60) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return _answer(b"".join(chunks))


def _answer(response: bytes) -> tuple[int, dict[str, Any]]:
    """An HTTP response's status and JSON body."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}
