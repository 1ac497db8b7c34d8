"""Shared fixtures: a tiny random-weight causal LM saved as a local model folder, a real Label Studio server and
the ML backend served by ``lwc serve`` in a subprocess (both started once per session, stopped at its end)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny_models import corpus_words, save_tiny_llama

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_CORPUS = (
    "Answer with one of yes , no . Answer : Text Which of the labels fits this text best ? Is this message "
    "spam sport business politics tech entertainment win a free prize now call see you at lunch the match "
    "ended in a draw shares fell today election new phone film star"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face model folder: a 2-layer random-weight Llama (seed 0, head scaled by 20) whose
    word-level vocabulary holds the class words of label_config/."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llm"), corpus_words(TINY_CORPUS), lm_head_scale=20)


@pytest.fixture(scope="session")
def tiny_llm_dirs(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny random-weight Llama folders with different weights: a 2-LLM cascade for the server tests."""
    other = save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llm-b"), corpus_words(TINY_CORPUS), seed=1, lm_head_scale=20
    )
    return [tiny_llm_dir, other]


TINY_LLM_NAMES = ("tiny-a", "tiny-b")


def write_oot_table(folder: Path, llms: tuple[str, ...] = TINY_LLM_NAMES, n_items: int = 200) -> Path:
    """A synthetic out-of-task scores table (``ls_backend.synthetic``: 9 yes/no tasks in spam, sentiment and topic
    families, scored by ``llms``) with its tasks file (questions = the family descriptions) beside it."""
    import yaml

    from ls_backend.scores import write_scores
    from ls_backend.synthetic import make_synthetic_scores

    folder.mkdir(parents=True, exist_ok=True)
    table = make_synthetic_scores(n_tasks=9, n_items=n_items, llms=llms, seed=3)
    path = folder / "scores.jsonl.gz"
    write_scores(table, path)
    tasks = {
        t.name: {"question": t.description, "classes": list(t.classes), "description": ""} for t in table
    }
    (folder / "tasks.yaml").write_text(yaml.safe_dump({"tasks": tasks}))
    return path


@pytest.fixture(scope="session")
def oot_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic out-of-task table of :func:`write_oot_table` for the tiny LLMs' names."""
    return write_oot_table(tmp_path_factory.mktemp("oot"))


@pytest.fixture(scope="session")
def label_studio() -> Iterator[object]:
    """A real Label Studio 1.23.2 on a free loopback port with a fresh data directory under .cache/ (installed
    into .venv-ls first if it is not there: ~110 s once). Yields its Credentials (url, token, ...)."""
    from tests.labelstudio_server import LabelStudioServer, install

    install()
    server = LabelStudioServer(
        port=free_port(),
        data_dir=REPO_ROOT / ".cache" / "labelstudio" / f"e2e-{os.getpid()}-{int(time.time())}",
    )
    try:
        credentials = server.start()
    except Exception:
        server.stop()
        raise
    try:
        yield credentials
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@dataclass(frozen=True)
class BackendProcess:
    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_model_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    import json

    deadline = time.monotonic() + timeout
    status = "not started"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lwc serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                status = json.loads(response.read())["model"]
        except OSError:
            status = "not listening"
        if status == "ready":
            return
        if status.startswith("failed"):
            raise RuntimeError(f"the backend could not load its model: {status}")
        time.sleep(0.5)
    raise RuntimeError(f"the backend's model is not ready after {timeout:.0f} s ({status})")


E2E_CONFIG = REPO_ROOT / "tests" / "fixtures" / "e2e_backend.yaml"


def lwc_command() -> list[str]:
    lwc = Path(sys.executable).parent / "lwc"
    if lwc.exists():
        return [str(lwc)]
    return [sys.executable, "-c", "import sys; from ls_backend.cli import main; sys.exit(main())"]


def launch_backend(
    config: Path, model_dir: Path, port: int, label_studio: object, log_path: Path, timeout: float = 300
) -> BackendProcess:
    """``lwc serve`` in a subprocess on ``127.0.0.1:port`` with ``config`` and ``model_dir``, reading Label Studio's
    API with the session's credentials; returns once its models are loaded (the log is appended to)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LWC_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LWC_MODEL_DIR")
    }
    env.update(
        LABEL_STUDIO_URL=label_studio.url,  # type: ignore[attr-defined]
        LABEL_STUDIO_API_KEY=label_studio.token,  # type: ignore[attr-defined]
        LWC_MODEL_DIR=str(model_dir),
        OMP_NUM_THREADS="1",
    )
    command = [*lwc_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--config", str(config)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_model_ready(url, process, log_path, timeout=timeout)
    except BaseException:
        stop_backend(process)
        raise
    return BackendProcess(url, log_path, process)


def stop_backend(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def ml_backend(label_studio: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    """``lwc serve`` in a subprocess on a free loopback port with ``tests/fixtures/e2e_backend.yaml`` (the real
    packaged SmolLM2 and Qwen2.5-Coder, a fresh model dir), reading project descriptions from the session's Label
    Studio; waits until the models are loaded."""
    folder = tmp_path_factory.mktemp("backend")
    backend = launch_backend(E2E_CONFIG, folder / "models", free_port(), label_studio, folder / "backend.log")
    try:
        yield backend
    finally:
        stop_backend(backend.process)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's package, installed by scripts/system_packages.sh) on a free loopback port,
    nothing saved to disk; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: run scripts/system_packages.sh (Debian's redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(folder / "redis.log")],
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(1)
                s.connect(("127.0.0.1", port))
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start: {(folder / 'redis.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
