"""``make demo``'s script end to end, against the session's real Label Studio (the ``label_studio`` fixture of
conftest.py, so that Label Studio starts once per test session) and with ``tests/fixtures/demo_smollm2.yaml`` (the
packaged SmolLM2 only; the default three-model cascade takes longer than CI should). It starts ``lwc serve``,
creates the demo project from real SMS messages, connects the backend, retrieves predictions and prints them with
the URL and login, then ``--exit-after 0`` stops the backend."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e


def test_demo_prints_predictions_url_and_login(label_studio: Any, tmp_path: Path) -> None:
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "demo.py"),
        "--config", str(REPO_ROOT / "tests" / "fixtures" / "demo_smollm2.yaml"),
        "--tasks", "8", "--backend-port", str(free_port()), "--model-dir", str(tmp_path / "models"),
        # "--opt=value": a generated secret may start with "-", which argparse would read as an option
        f"--ls-url={label_studio.url}", f"--ls-token={label_studio.token}",
        f"--ls-user={label_studio.username}", f"--ls-password={label_studio.password}", "--exit-after", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+  ", line)]
    assert len(rows) == 8
    for row in rows:
        match = re.search(r" (yes|no) +(yes|no) +(\d\.\d\d)  smollm2 (yes|no) \d\.\d\d \(\d+\.\d\d\)$", row)
        assert match, row
        assert 0.0 <= float(match.group(3)) <= 1.0
    assert "8 of 8 tasks predicted" in out
    assert "job 1 prelabel: 100%" in out and "8/8" in out  # pre-annotated by the backend's job, with its bar
    project_url = re.search(r"Label Studio: +(http://127\.0\.0\.1:\d+/projects/(\d+)/data)", out)
    assert project_url and project_url.group(1).startswith(label_studio.url)
    assert f"login:         {label_studio.username} / {label_studio.password}" in out
    assert re.search(r"model version: (oot-sim|oot-all|default-rule)-[0-9a-f]{8}", out)
    assert out.rstrip().endswith("stopped.")
