from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ls_backend import metrics
from ls_backend.plots import (
    AceCurve,
    BandCurve,
    FrontierPanel,
    LinesPanel,
    ace_vs_shots,
    cost_frontier,
    expected_size,
    frontier_lines,
    learning_curves,
    png_size,
    reliability_diagram,
)


def curve(seed: int, temperature: float) -> metrics.ReliabilityCurve:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.5, 1.0, 400)
    hits = rng.random(400) < 0.5 + (scores - 0.5) / temperature
    return metrics.reliability_curve(scores, hits, n_bins=8)


def test_reliability_diagram_writes_a_png_of_the_expected_size(tmp_path: Path) -> None:
    curves = {f"llm{i}": {"uncalibrated": curve(i, 3.0), "calibrated": curve(i + 10, 1.0)} for i in range(3)}
    path = reliability_diagram(curves, tmp_path / "sub" / "reliability.png", title="t", dpi=50)
    assert path.exists() and path.stat().st_size > 5_000
    assert png_size(path) == expected_size(3, 3, (4.0, 4.0), 50)
    assert b"Software" not in path.read_bytes()[:4096]  # no software/date metadata


def test_reliability_diagram_skips_empty_bins(tmp_path: Path) -> None:
    empty_bins = metrics.reliability_curve(
        np.full(10, 0.9), np.ones(10, dtype=bool), n_bins=10, strategy="uniform"
    )
    assert np.isnan(empty_bins.mean_score).any()
    path = reliability_diagram({"one": {"all the same": empty_bins}}, tmp_path / "r.png", dpi=40)
    assert png_size(path) == expected_size(1, 3, (4.0, 4.0), 40)


def test_figures_are_deterministic(tmp_path: Path) -> None:
    curves = {"a": {"before": curve(0, 3.0)}}
    first = reliability_diagram(curves, tmp_path / "1.png", dpi=40).read_bytes()
    second = reliability_diagram(curves, tmp_path / "2.png", dpi=40).read_bytes()
    assert first == second


def test_ace_vs_shots(tmp_path: Path) -> None:
    shots = np.array([10, 20, 50, 100])
    panels = {
        f"{llm} / {cal}": {
            sampler: AceCurve(
                shots, 0.1 / np.sqrt(shots) + k, 0.05 / np.sqrt(shots), 0.2 / np.sqrt(shots) + k
            )
            for k, sampler in enumerate(("U", "SE", "IE"))
        }
        for llm in ("small", "large")
        for cal in ("ST", "SV")
    }
    baselines = {title: {"uncalibrated": 0.2, "SIM-OOT": math.nan} for title in panels}
    path = ace_vs_shots(panels, tmp_path / "ace.png", baselines=baselines, max_columns=2, dpi=40)
    assert path.stat().st_size > 5_000
    assert png_size(path) == expected_size(4, 2, (4.2, 3.4), 40)


def test_cost_frontier(tmp_path: Path) -> None:
    panels = {
        f"task {i}": FrontierPanel(
            cost=np.array([1.0, 1.6, 2.4, 4.0]),
            f1=np.array([0.5, 0.7, 0.75, 0.76]) - 0.01 * i,
            points={"llm0": (1.0, 0.5), "weighted majority": (6.0, 0.7), "cascade": (2.0, 0.74)},
        )
        for i in range(5)
    }
    panels["no frontier"] = FrontierPanel(np.zeros(0), np.zeros(0), {"llm0": (1.0, 0.4), "other": (2.0, 0.5)})
    path = cost_frontier(panels, tmp_path / "frontier.png", title="frontier", dpi=40)
    assert path.stat().st_size > 5_000
    legend_rows = math.ceil((4 + 1) / 3)  # 4 distinct point labels + the frontier line, 3 per row
    assert png_size(path) == expected_size(6, 4, (3.6, 3.0), 40, extra_height=0.25 * legend_rows + 0.3)


def test_learning_curves(tmp_path: Path) -> None:
    labels = np.array([10, 20, 50, 100, 200])
    accuracy = {
        name: BandCurve(
            labels, base + 0.05 * np.log10(labels), base - 0.05 + 0 * labels, base + 0.2 + 0 * labels
        )
        for name, base in (("student", 0.5), ("cascade", 0.7), ("both", 0.72))
    }
    calls = {"cascade": (labels, np.full(5, 1.8)), "both": (labels, np.array([1.5, 1.0, 0.4, 0.3, 0.3]))}
    path = learning_curves(accuracy, calls, tmp_path / "curve.png", dpi=40)
    assert path.stat().st_size > 5_000
    assert png_size(path) == expected_size(2, 2, (4.6, 3.6), 40)


def test_frontier_lines(tmp_path: Path) -> None:
    cost = np.array([0.01, 0.1, 0.3, 1.0])
    panels = {
        metric: LinesPanel(metric, {"with": (cost, np.array([0.6, 0.7, 0.8, 0.82])),
                                    "without": (cost[1:], np.array([0.5, 0.7, 0.8]))},
                           {"student": (0.01, 0.6), "served": (0.3, 0.79)})
        for metric in ("F1", "accuracy")
    }  # fmt: skip
    path = frontier_lines(panels, tmp_path / "lines.png", xlabel="cost", dpi=40)
    assert path.stat().st_size > 5_000
    legend_rows = math.ceil(4 / 2)  # 2 lines + 2 points, 2 per row
    assert png_size(path) == expected_size(2, 2, (4.6, 3.6), 40, extra_height=0.25 * legend_rows + 0.3)
    with pytest.raises(ValueError, match="same length"):
        LinesPanel("F1", {"bad": (cost, cost[:2])}, {})


def test_bad_inputs_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one panel"):
        reliability_diagram({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to draw"):
        ace_vs_shots({"a": {}}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="ReliabilityCurve"):
        reliability_diagram({"a": {"b": np.zeros(3)}}, tmp_path / "x.png")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="same length"):
        FrontierPanel(np.zeros(3), np.zeros(2), {})
    with pytest.raises(ValueError, match="one non-zero length"):
        AceCurve(np.array([10, 20]), np.zeros(2), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="one non-zero length"):
        BandCurve(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="not a PNG"):
        (tmp_path / "text.png").write_text("hello")
        png_size(tmp_path / "text.png")
