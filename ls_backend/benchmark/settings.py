"""The reproduction's settings (everything that changes its numbers, all of it written into the report) and its
default inputs and outputs. Light to import: ``lwc --help`` reads the defaults."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

# The committed benchmark (package data), relative to the current directory: the repository's root when run as
# documented, and the paths the report records.
DEFAULT_DIR = "ls_backend/data/benchmark"
DEFAULT_SCORES = f"{DEFAULT_DIR}/scores.jsonl.gz"
DEFAULT_TASKS = f"{DEFAULT_DIR}/tasks.yaml"
DEFAULT_LLMS = f"{DEFAULT_DIR}/llms.yaml"
DEFAULT_ITEMS = f"{DEFAULT_DIR}/items.jsonl"
DEFAULT_OUT = "docs/results.md"
DEFAULT_FIGURES = "docs/figures"
DEFAULT_DISCUSSION = "docs/benchmark/discussion.md"


def machine_description() -> dict[str, Any]:
    """What a measurement's provenance records of the machine it ran on (torch is imported here, not at import)."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


@dataclass(frozen=True)
class Settings:
    """Everything that changes the reproduction's numbers (all of it is written into the report)."""

    seed: int = 0
    shots: tuple[int, ...] = (10, 20, 50, 100)
    repeats: int = 20
    ace_bins: int = 10
    # The benchmark's binary tasks come in four families (spam, sentiment, question type, news topic); four
    # agglomerative clusters of their MiniLM description embeddings recover exactly these, while the runner's
    # default round(sqrt(12)) = 3 merges questions with news. Chosen from the descriptions, before any score.
    n_clusters: int | None = 4
    cascade_bins: tuple[int, ...] = (5, 10)
    cascade_calibrator: str = "ST"
    trials: int = 100
    inner_splits: int = 10
    eval_repeats: int = 5
    test_size: float = 0.2
    bootstrap_resamples: int = 2000
    noise_floor_draws: int = 20
    answer_repeats: int = 4
    quick: bool = False


QUICK = Settings(
    shots=(10, 30), repeats=2, trials=4, inner_splits=2, eval_repeats=2, bootstrap_resamples=200,
    noise_floor_draws=3, answer_repeats=2, quick=True,
)  # fmt: skip
"""Small settings for smoke tests, not for conclusions."""
