"""How the label store commits: the server's ``loop.label_store_sync`` (NORMAL by default, FULL on request), and
what NORMAL promises: every webhook acknowledged before a ``kill -9`` of its process is in the store afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ls_backend.loop import LabelStore
from ls_backend.loop.simulation import synthetic_project
from ls_backend.server import CascadePredictor, create_app
from ls_backend.server.config import BackendConfig, ConfigError, parse_extra_params
from ls_backend.server.projects import ProjectDescriptions

PRAGMA_LEVEL = {"NORMAL": 1, "FULL": 2}  # what PRAGMA synchronous reads back


def server_store(config: dict[str, Any]) -> LabelStore:
    app = create_app(
        config, CascadePredictor(), auth=None, webhook_secret=None, descriptions=ProjectDescriptions(None)
    )
    store = app.extensions["lwc"].learning.store
    assert isinstance(store, LabelStore)
    return store


@pytest.mark.parametrize(("setting", "level"), [(None, "NORMAL"), ("normal", "NORMAL"), ("full", "FULL")])
def test_the_servers_label_store_commits_as_configured(
    tmp_path: Path, setting: str | None, level: str
) -> None:
    loop = {} if setting is None else {"label_store_sync": setting}
    store = server_store({"model_dir": str(tmp_path / "models"), "llms": [], "loop": loop})
    assert store.synchronous == level
    # a connection of another thread is opened the same way
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(lambda: store._connection().execute("PRAGMA synchronous").fetchone()[0]).result()
    assert read == PRAGMA_LEVEL[level]


def test_an_unknown_sync_level_is_refused_and_projects_cannot_set_it() -> None:
    with pytest.raises(ConfigError, match="label_store_sync"):
        BackendConfig.from_mapping({"loop": {"label_store_sync": "off"}})
    with pytest.raises(ConfigError, match="only be set in the server's config file"):
        BackendConfig().merged(parse_extra_params(json.dumps({"loop": {"label_store_sync": "full"}})))


CHILD = textwrap.dedent(
    """
    import sys
    from ls_backend.loop import LabelStore
    from ls_backend.loop.simulation import synthetic_project

    store = LabelStore(sys.argv[1], synchronous="NORMAL")
    project = synthetic_project(10_000, seed=3, project=1)
    for i in range(10_000):
        outcome = store.record_event(project.annotation_payload(i, i + 1))
        print(outcome.event_id, outcome.outcome, flush=True)  # acknowledged
    """
)


def test_normal_keeps_every_acknowledged_webhook_through_a_kill(tmp_path: Path) -> None:
    db = tmp_path / "labels.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    deadline = time.monotonic() + 120
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        event_id, outcome = line.split()
        assert outcome == "applied"
        acknowledged.append(int(event_id))
    child.send_signal(signal.SIGKILL)  # mid-stream: no close, no checkpoint
    child.wait(30)
    acknowledged += [int(line.split()[0]) for line in child.stdout.read().splitlines() if line.strip()]
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300, "the child did not acknowledge enough events before the deadline"
    store = LabelStore(db)
    stored = set(store.labels(1).task_ids.tolist())
    project = synthetic_project(10_000, seed=3, project=1)
    # every acknowledged event is stored, and its label with it
    assert set(acknowledged) <= {event["id"] for event in store.events(1, limit=20_000)}
    assert {int(project.task_ids[i]) for i in range(len(acknowledged))} <= stored
