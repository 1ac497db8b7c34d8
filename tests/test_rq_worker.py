"""``lwc worker``'s RQ worker on a real redis-server (``redis_server`` of conftest.py): its command listener stops
promptly, so a SIGTERM stops an idle worker at once.

RQ unsubscribes its command listener (a redis-py ``PubSubWorkerThread``) before it stops it, and since redis-py
8.2 ``stop()`` waits for the thread. When the thread reads the unsubscribe reply before ``stop()`` clears its flag,
it goes back to sleep for its ``sleep_time`` (RQ's: 60 s), and ``stop()`` with it: on a busy machine 12 of 15
workers told to stop right after a job took over 10 s to exit (CI's rq end-to-end test timed out twice on it).
That race is forced here, in order, rather than waited for.
"""

from __future__ import annotations

import threading
import time

from ls_backend.server.rq_jobs import (
    COMMAND_LISTENER_SLEEP_S,
    command_listening_worker_class,
    connection,
    queue,
)


def test_the_command_listener_stops_promptly_after_it_read_its_unsubscribe_reply(redis_server: str) -> None:
    worker = command_listening_worker_class()([queue(redis_server)], connection=connection(redis_server))
    worker.subscribe()
    listener = worker.pubsub_thread
    deadline = time.monotonic() + 10
    while not worker.pubsub.subscribed:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.01)
    time.sleep(0.2)  # the listener is waiting for a command

    worker.pubsub.unsubscribe()
    while worker.pubsub.subscribed:  # the listener read the reply and went back to waiting
        assert time.monotonic() < deadline, "the listener never read its unsubscribe reply"
        time.sleep(0.01)
    time.sleep(0.2)

    stopping = time.monotonic()
    stopper = threading.Thread(target=listener.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=COMMAND_LISTENER_SLEEP_S + 5)
    assert not stopper.is_alive(), "the command listener did not stop: RQ's 60 s sleep is back"
    assert not listener.is_alive()
    assert time.monotonic() - stopping <= COMMAND_LISTENER_SLEEP_S + 1
    worker.pubsub.close()
    worker.connection.close()


def test_the_worker_listens_for_rq_commands(redis_server: str) -> None:
    """The override keeps RQ's command channel: a shutdown command sent through RQ reaches the worker's handler."""
    from rq.command import parse_payload, send_shutdown_command

    worker = command_listening_worker_class()([queue(redis_server)], connection=connection(redis_server))
    worker.register_birth()
    received: list[dict] = []
    arrived = threading.Event()

    def handle_payload(message: dict) -> None:  # RQ's would SIGINT this process
        received.append(parse_payload(message))
        arrived.set()

    worker.handle_payload = handle_payload
    worker.subscribe()
    try:
        deadline = time.monotonic() + 10
        while not worker.pubsub.subscribed:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        send_shutdown_command(worker.connection, worker.name)
        assert arrived.wait(timeout=10), "RQ's shutdown command did not reach the worker"
        assert received == [{"command": "shutdown"}]
    finally:
        worker.unsubscribe()
        worker.register_death()
        worker.connection.close()
