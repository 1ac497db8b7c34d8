"""The learning loop's cost weight: how its default is chosen, and that a config refuses a bad one."""

from __future__ import annotations

import pytest

from ls_backend.benchmark.cost_weight import WeightRow, choose_weight, weight_markdown
from ls_backend.loop.trainer import COST_WEIGHT, LoopConfig


def row(weight: float, accuracies: list[float], shares: list[float]) -> WeightRow:
    counts = [10, 50]
    return WeightRow(
        weight, dict(zip(counts, accuracies, strict=True)), dict(zip(counts, shares, strict=True)),
        dict(zip(counts, accuracies, strict=True)), dict(zip(counts, accuracies, strict=True)),
    )  # fmt: skip


def test_the_largest_weight_within_the_tolerance_is_chosen() -> None:
    rows = [row(0.0, [0.70, 0.80], [1, 0.7]), row(0.1, [0.70, 0.797], [1, 0.6]), row(0.2, [0.69, 0.80], [1, 0.5]),
            row(0.3, [0.66, 0.80], [1, 0.4])]  # fmt: skip
    assert choose_weight(rows, 0.005) == 0.2  # 0.3 costs 2 points on the mean
    assert choose_weight(rows, 0.0) == 0.0
    table = weight_markdown(rows, 0.2, 0.005, {"student_from": 20, "recipe": "CC/ST/calibrated"})
    assert "| 0.2 (chosen) | 0.745 | 0.690 / 1.00 | 0.800 / 0.50 |" in table
    with pytest.raises(ValueError, match="start at weight 0"):
        choose_weight(rows[1:], 0.005)


def test_the_loop_config_carries_the_cost_weight_and_refuses_a_bad_one() -> None:
    assert LoopConfig().cost_weight == COST_WEIGHT
    assert LoopConfig(cost_weight=0.4).in_task_settings().cost_weight == 0.4
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cost_weight"):
            LoopConfig(cost_weight=bad)
