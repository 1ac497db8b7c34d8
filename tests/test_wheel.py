"""The package installs and serves on its own: a wheel built from this checkout, installed into a fresh virtual
environment outside it, runs ``lwc serve`` from a folder outside it with the built-in defaults and answers
``/health`` and a ``/setup`` as Label Studio sends it, from the benchmark table the wheel carries.

Nothing is downloaded: the wheel is built without build isolation (the project's environment has setuptools) and
installed without dependencies; the new environment reaches the heavy dependencies (torch, transformers, ...) of
the project's environment through a ``.pth`` line, which adds that folder to ``sys.path`` without running the
``.pth`` files in it, so the project's own editable install of this package stays out of it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("scores.jsonl.gz", "content_free.jsonl.gz", "tasks.yaml")
# the body of Label Studio 1.23.2's /setup when the backend is added (the captures' 02_POST_setup_ml.create.json)
SETUP = {
    "project": "1.1795875050",
    "schema": (REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text(encoding="utf-8"),
    "hostname": "http://localhost:8080",
    "access_token": "<redacted>",
    "extra_params": None,
}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def build_wheel(folder: Path) -> Path:
    """A wheel of this checkout's package, built from a copy of what it is made of (so the build writes nothing
    into the checkout, and the package data must be declared to be in it)."""
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(
        REPO_ROOT / "ls_backend",
        source / "ls_backend",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "items.jsonl"),
    )
    wheels = folder / "wheels"
    needed = Version(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"][0]
                     .removeprefix("setuptools>="))  # fmt: skip
    assert Version(importlib.metadata.version("setuptools")) >= needed, (
        f"building without isolation needs setuptools >= {needed} in this environment (the dev extra has it)"
    )
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", str(wheels), str(source)])  # fmt: skip
    (wheel,) = wheels.glob("label_with_confidence-*.whl")
    return wheel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.mark.slow
def test_the_wheel_installs_and_serves_outside_the_checkout(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(REPO_ROOT)
    started = time.monotonic()
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"ls_backend/data/benchmark/{name}" for name in PACKAGE_DATA} <= names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
         str(wheel)])  # fmt: skip
    site_packages = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    dependencies = sysconfig.get_paths()["purelib"]  # the project environment's, where torch & co. are
    (Path(site_packages.stdout.strip()) / "project-dependencies.pth").write_text(dependencies + "\n")

    work = tmp_path / "work"  # the server's working directory, outside the checkout
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LWC_CONFIG", "LWC_OOT_SCORES")}
    env |= {"LWC_MODEL_DIR": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    found = run(
        [str(python), "-c", "import ls_backend, ls_backend.data as d; print(ls_backend.__file__); "
         "print(d.BENCHMARK_SCORES); print(d.BENCHMARK_SCORES.is_file())"],
        cwd=work, env=env,
    )  # fmt: skip
    package_file, scores, is_file = found.stdout.split()
    assert Path(package_file).is_relative_to(venv) and Path(scores).is_relative_to(venv) and is_file == "True"

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(venv / "bin" / "lwc"), "serve", "--port", str(port), "--no-warm-up"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                status, health = call(f"{base}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer /health in 120 s"
                time.sleep(0.25)
        assert status == 200 and health["status"] == "UP" and health["model"] == "lazy"
        status, reply = call(f"{base}/setup", SETUP)
        assert status == 200, reply
        # the built-in LLMs found tasks with the project's classes in the packaged table: out-of-task calibrators
        # from all of them (no description: ALL-OOT), not the default rule of a server without a table
        assert reply["model_version"].startswith("oot-all-"), reply
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    served = (tmp_path / "serve.log").read_text()
    assert "serving the ML backend" in served and "loading LLM" not in served, (
        served
    )  # /setup loads no weights
    elapsed = time.monotonic() - started
    assert elapsed < 120, (
        f"{elapsed:.0f} s: more than a build, an install and a start take (was an LLM loaded?)"
    )
