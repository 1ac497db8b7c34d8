"""The development launcher of a real Label Studio (tests/labelstudio_server.py), without starting one: the
environment it gives Label Studio, its credentials, and a clear error when Label Studio is not installed."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from tests.labelstudio_server import LabelStudioError, LabelStudioServer, installed_version


def test_launcher_environment_and_missing_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERNAME", "someone")
    server = LabelStudioServer(port=18080, data_dir=tmp_path / "data", venv=tmp_path / "no-venv")
    env = server.environment()
    assert "USERNAME" not in env and "PASSWORD" not in env
    assert len(env["LABEL_STUDIO_USER_TOKEN"]) == 40
    assert (
        env["ML_BLOCK_LOCAL_IP"] == env["SSRF_PROTECTION_ENABLED"] == env["LATEST_VERSION_CHECK"] == "false"
    )
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "data")
    assert installed_version(tmp_path / "no-venv") is None
    with pytest.raises(LabelStudioError, match="install"):
        server.start(timeout=1)


def test_generated_credentials_are_hex() -> None:
    """A password that starts with '-' is read as an option when pasted into a command line (the CI failure)."""
    for _ in range(50):
        server = LabelStudioServer()
        assert set(server.password + server.token) <= set(string.hexdigits)
