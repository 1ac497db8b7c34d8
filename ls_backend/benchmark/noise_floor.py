"""The ACE noise floor: the ACE a perfectly calibrated LLM shows on as few held-out items as the in-task cells
measure on, so that calibrated values near it are read as 'cannot improve further'."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ls_backend import confidence, metrics
from ls_backend.benchmark.settings import Settings
from ls_backend.scores import ScoresTable


def ace_noise_floor(table: ScoresTable, llms: Sequence[str], settings: Settings, n_heldout: int) -> float:
    """Mean ACE of a perfectly calibrated LLM with the real LLMs' uncalibrated score distributions, measured
    on ``n_heldout`` items as the in-task cells are: hits drawn as Bernoulli(score), seeded."""
    rng = np.random.default_rng([settings.seed, 7])
    values = []
    for task in table:
        labeled = task.labeled
        for llm in llms:
            li = task.llm_index(llm)
            scores = confidence.confidence_scores(task.logits[li, labeled], task.answers[li, labeled])
            for _ in range(settings.noise_floor_draws):
                drawn = rng.choice(scores, size=min(n_heldout, scores.size), replace=False)
                values.append(metrics.ace(drawn, rng.random(drawn.size) < drawn, settings.ace_bins))
    return float(np.mean(values))
