"""Data that ships inside the package (read with :mod:`importlib.resources`, so an installed wheel finds it
wherever it is installed, and a checkout finds it in its source tree).

``benchmark/`` holds the public benchmark's data (docs/benchmark/README.md says what each file is and what writes
it). The server builds its out-of-task calibrators from ``scores.jsonl.gz``, with ``content_free.jsonl.gz`` and
``tasks.yaml`` beside it (config key ``oot_scores``, ``ls_backend/server/config.py``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BENCHMARK = Path(str(files(__name__) / "benchmark"))
"""The folder of the public benchmark's data (a real folder: a wheel installs its package data as files)."""

BENCHMARK_SCORES = BENCHMARK / "scores.jsonl.gz"
"""The benchmark's scores table: every item of its 14 tasks scored by the three packaged LLMs."""

BENCHMARK_TASKS = BENCHMARK / "tasks.yaml"
"""The benchmark's tasks (question, classes, description), beside the scores."""
