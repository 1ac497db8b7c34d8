"""Install, start and stop a real Label Studio (headless, on loopback) for tests, benchmarks and the demo.

Test infrastructure, not part of the backend: the backend only talks to a Label Studio that someone runs. Label
Studio pins its own Django, numpy and label-studio-sdk, so it lives in its own virtual environment (``.venv-ls``
at the repository root), installed once and reused while it holds the wanted version::

    scripts/labelstudio.sh install            # ~110 s and ~1 GB the first time
    scripts/labelstudio.sh start --port 8080  # prints the URL and the API token
    scripts/labelstudio.sh stop

(``python -m tests.labelstudio_server ...`` from the repository root is the same.)

``start`` uses a fresh data directory under ``.cache/`` (migrations take ~70 s on first start), an admin user
and a 40-character legacy API token, and turns off what a loopback setup does not want: the SSRF guard that
refuses ML backends on 127.0.0.1, the version check against the package index, analytics and Sentry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

LABEL_STUDIO_VERSION = "1.23.2"
COMMAND = "scripts/labelstudio.sh"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".venv-ls"
DEFAULT_STATE_DIR = REPO_ROOT / ".cache" / "labelstudio"


class LabelStudioError(RuntimeError):
    """Label Studio could not be installed, started or reached."""


def installed_version(venv: Path = DEFAULT_VENV) -> str | None:
    """The label-studio version installed in ``venv`` (None when there is none)."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('label-studio'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def install(venv: Path = DEFAULT_VENV, version: str = LABEL_STUDIO_VERSION, quiet: bool = True) -> Path:
    """Install ``label-studio==version`` into its own venv, unless it is already there; returns the venv."""
    if installed_version(venv) == version:
        return venv
    if not (venv / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", *(["-q"] if quiet else [])]
    done = subprocess.run([*pip, f"label-studio=={version}"], check=False)
    if done.returncode != 0 or installed_version(venv) != version:
        raise LabelStudioError(
            f"installing label-studio=={version} into {venv} failed (pip exit {done.returncode})"
        )
    return venv


@dataclass(frozen=True)
class Credentials:
    url: str
    username: str
    password: str
    token: str
    data_dir: str
    pid: int


def _get_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


class LabelStudioServer:
    """One Label Studio process on 127.0.0.1 with a fresh data directory.

    Args:
        port: where it listens.
        data_dir: its data directory (default: a new folder under ``.cache/labelstudio/``).
        venv: the virtual environment with label-studio installed.
    """

    def __init__(self, port: int = 8080, data_dir: Path | None = None, venv: Path = DEFAULT_VENV) -> None:
        self.port = port
        self.venv = venv
        self.data_dir = data_dir or DEFAULT_STATE_DIR / f"data-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.username = "admin@example.com"
        # hex: a password that starts with "-" is read as an option when pasted into a command line
        self.password = secrets.token_hex(12)
        self.token = secrets.token_hex(20)  # a legacy token is 40 characters
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "label-studio.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("USERNAME", "PASSWORD")}  # LS reads these too
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            # the ML backend runs on loopback in this setup; a compose file gives it a service hostname instead
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
        )
        # a first /predict of a cold cascade loads and runs several local LLMs on CPU: give it more than 100 s
        env.setdefault("ML_TIMEOUT_PREDICT", "300")
        return env

    def start(self, timeout: float = 240.0) -> Credentials:
        """Start it and wait until ``/health`` answers 200."""
        if installed_version(self.venv) is None:
            raise LabelStudioError(f"no Label Studio in {self.venv}; run: {COMMAND} install")
        if _get_status(f"{self.url}/health") is not None:
            raise LabelStudioError(f"something already listens on {self.url}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.venv / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--port",
            str(self.port),
            "--internal-host",
            "127.0.0.1",
            "--enable-legacy-api-token",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabelStudioError(
                    f"Label Studio exited with {self.process.returncode} while starting; see {self.log_path}:\n"
                    + self.log_tail()
                )
            if _get_status(f"{self.url}/health") == 200:
                return self.credentials()
            time.sleep(1.0)
        self.stop()
        raise LabelStudioError(
            f"Label Studio did not answer /health within {timeout:.0f} s; see {self.log_path}"
        )

    def credentials(self) -> Credentials:
        pid = self.process.pid if self.process is not None else -1
        return Credentials(self.url, self.username, self.password, self.token, str(self.data_dir), pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process group this object started (Label Studio forks workers)."""
        if self.process is None or self.process.poll() is not None:
            return
        process = self.process
        stop_process_group(process.pid, timeout, alive=lambda: process.poll() is None)
        process.wait(timeout=5)


def stop_process_group(pid: int, timeout: float = 20.0, alive: Callable[[], bool] | None = None) -> None:
    """SIGTERM the process group led by ``pid`` (started with ``start_new_session``), SIGKILL after ``timeout``.

    ``alive`` tells whether the leader still runs (for a child of this process, ``Popen.poll``: a child that
    exited stays a zombie, and so visible to ``killpg``, until it is waited for)."""

    def group_alive() -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        return True

    is_alive = alive or group_alive
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive():
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # whatever is left of the group (workers the leader did not stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "install", help=f"install label-studio=={LABEL_STUDIO_VERSION} into --venv (skipped if there)"
    )
    start = sub.add_parser("start", help="start it in the background; prints URL and token as JSON")
    start.add_argument("--port", type=int, default=8080)
    start.add_argument("--data-dir", type=Path, default=None)
    sub.add_parser("stop", help="stop the Label Studio that 'start' started")
    args = parser.parse_args(argv)
    state_file = DEFAULT_STATE_DIR / "running.json"
    if args.command == "install":
        print(install(args.venv, quiet=False))
        return 0
    if args.command == "start":
        server = LabelStudioServer(port=args.port, data_dir=args.data_dir, venv=args.venv)
        credentials = server.start()
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(asdict(credentials), indent=1))
        state_file.chmod(0o600)
        print(json.dumps(asdict(credentials), indent=1))
        return 0
    if not state_file.exists():
        print(f"nothing to stop: {state_file} does not exist", file=sys.stderr)
        return 1
    stop_process_group(json.loads(state_file.read_text())["pid"])
    state_file.unlink()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
