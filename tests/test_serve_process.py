"""``lwc serve``'s processes (granian, the default HTTP server): a supervisor and one worker that builds and serves
the app. Stopping the supervisor stops the worker, SIGKILL included (no orphan keeps the port or the label store); a
configuration the worker cannot start with ends ``lwc serve`` with its error; ``--http-server waitress`` serves the
same app in one process."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port, lwc_command
from tests.test_prelabel_e2e import wait_for


@contextmanager
def _serving(
    tmp_path: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``lwc serve`` started in a subprocess (its log in ``serve.log``), and killed at the end if still running."""
    port = free_port()
    config = tmp_path / "backend.yaml"
    config.write_text(f"model_dir: {tmp_path / 'models'}\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("LWC_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
    }
    env.update(env_extra or {})
    command = [*lwc_command(), "serve", "--port", str(port), "--config", str(config), "--no-warm-up", *extra]
    with (tmp_path / "serve.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_sigkill_of_the_supervisor_takes_the_worker_with_it(tmp_path: Path) -> None:
    with _serving(tmp_path) as (process, port):
        wait_for(lambda: _healthy(port), 60, "lwc serve")
        workers = _children(process.pid)
        assert len(workers) == 1, workers  # granian's one worker serves
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        wait_for(lambda: not _alive(workers[0]), 10, "the worker to end with its supervisor")
        assert not _healthy(port)


def test_sigterm_stops_lwc_serve_cleanly(tmp_path: Path) -> None:
    with _serving(tmp_path) as (process, port):
        wait_for(lambda: _healthy(port), 60, "lwc serve")
        process.terminate()
        assert process.wait(30) == 0
        assert not _healthy(port)


def test_an_error_while_the_worker_starts_ends_lwc_serve_with_it(tmp_path: Path) -> None:
    # the configuration file is fine; the environment's half-set basic auth is refused where the app is built
    with _serving(tmp_path, env_extra={"BASIC_AUTH_USER": "admin"}) as (process, _):
        assert process.wait(60) == 2
    log = (tmp_path / "serve.log").read_text()
    assert "set both BASIC_AUTH_USER and BASIC_AUTH_PASS" in log
    assert "lwc serve: error: the server's worker process stopped unexpectedly" in log
    assert "Traceback" not in log  # a configuration error is one line, as the CLI reports it


def test_waitress_serves_the_same_app_in_one_process(tmp_path: Path) -> None:
    with _serving(tmp_path, "--http-server", "waitress") as (process, port):
        wait_for(lambda: _healthy(port), 60, "lwc serve --http-server waitress")
        if Path("/proc/self/task").is_dir():
            assert _children(process.pid) == []
    assert "(waitress)" in (tmp_path / "serve.log").read_text()


def test_the_worker_loader_pickles_where_workers_are_spawned() -> None:
    """granian spawns its worker instead of forking it where multiprocessing's start method is not fork (macOS,
    Python 3.14's forkserver default): what builds the app must then cross to the worker pickled."""
    import functools
    import pickle

    from ls_backend.cli.serve import _worker_app
    from ls_backend.server.app import create_app
    from ls_backend.server.config import load_config

    loader = functools.partial(_worker_app, functools.partial(create_app, load_config(None), warm_up=True), 1)
    restored = pickle.loads(pickle.dumps(loader))
    assert restored.args[0].func is create_app
    assert restored.args[0].args[0] == load_config(None)
