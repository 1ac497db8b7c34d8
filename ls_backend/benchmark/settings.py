"""The reproduction's settings (everything that changes its numbers, all of it written into the report) and its
default inputs and outputs. Light to import: ``lwc --help`` reads the defaults."""

from __future__ import annotations

from dataclasses import dataclass

# The committed benchmark (package data), relative to the current directory: the repository's root when run as
# documented, and the paths the report records.
DEFAULT_SCORES = "ls_backend/data/benchmark/scores.jsonl.gz"
DEFAULT_TASKS = "ls_backend/data/benchmark/tasks.yaml"
DEFAULT_OUT = "docs/results.md"
DEFAULT_FIGURES = "docs/figures"
DEFAULT_DISCUSSION = "docs/benchmark/discussion.md"


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
