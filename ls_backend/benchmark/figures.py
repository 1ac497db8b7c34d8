"""The report's figures: pooled reliability diagrams, ACE against shots, and F1 against cost (the calibrated
cascade's cost-aware frontier and the fixed policies); and the answer study's two student figures (learning curves,
and the cost frontiers with and without the student), linked from the student's section."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.benchmark.table3 import frontier_pick
from ls_backend.experiments import UNCALIBRATED, Scenario

if TYPE_CHECKING:
    from ls_backend.benchmark.answers import AnswerStudy
    from ls_backend.benchmark.report import Report

LEARNING_CURVE_FILE = "learning_curve.png"
STUDENT_FRONTIER_FILE = "cost_frontier_student.png"


def make_figures(report: Report, figures_dir: Path, out_path: Path, curves: Any) -> dict[str, str]:
    """Writes the reliability diagrams, ACE against shots and the cost frontier (those there is data for) into
    ``figures_dir``; returns each caption with its link relative to the report ``out_path``."""
    from ls_backend import plots

    s = report.settings
    experiment = report.calib.experiment
    written: dict[str, Path] = {}
    if curves:
        written["Reliability diagrams (binary tasks, held-out items pooled), before and after calibration"] = (
            plots.reliability_diagram(curves, figures_dir / "reliability.png", max_columns=len(curves)))  # fmt: skip

    panels: dict[str, dict[str, plots.AceCurve]] = {}
    baselines: dict[str, dict[str, float]] = {}
    shots = np.array(sorted(s.shots))
    for cal in experiment.config["calibrators"]:
        for llm in experiment.llms:
            title = f"{llm} / {cal}"
            methods = {}
            for sampler in experiment.config["samplers"]:
                stats = [
                    experiment.summary(llm, Scenario("in-task", cal, int(k), sampler).key) for k in shots
                ]
                if any(x is None for x in stats):
                    continue
                methods[sampler] = plots.AceCurve(
                    shots, np.array([x["mean"] for x in stats if x]), np.array([x["q25"] for x in stats if x]),
                    np.array([x["q75"] for x in stats if x]),
                )  # fmt: skip
            if methods:
                panels[title] = methods
                uncal = experiment.summary(llm, UNCALIBRATED)
                oot_key = f"SIM-OOT/{cal}" if f"SIM-OOT/{cal}" in experiment.scenarios else f"ALL-OOT/{cal}"
                oot = experiment.summary(llm, oot_key)
                baselines[title] = {
                    "uncalibrated": uncal["mean"] if uncal else math.nan,
                    oot_key: oot["mean"] if oot else math.nan,
                }
    if panels:
        written["ACE against shots: mean over binary tasks, band = per-task 25th-75th percentile"] = (
            plots.ace_vs_shots(
                panels,
                figures_dir / "ace_vs_shots.png",
                baselines=baselines,
                max_columns=len(experiment.llms),
            )
        )

    frontier_panels = frontier_panels_of(report)
    if frontier_panels:
        written[f"F1 against cost: the calibrated cascade's cost-aware frontier ({max(s.cascade_bins)} bins, first "
                "split) and the fixed policies"] = plots.cost_frontier(
            frontier_panels, figures_dir / "cost_frontier.png")  # fmt: skip
    return {
        caption: os.path.relpath(path, out_path.parent).replace(os.sep, "/")
        for caption, path in written.items()
    }


def frontier_panels_of(report: Report) -> dict[str, Any]:
    """Per task: the frontier (test relative cost, test F1) and the fixed policies of the same split; first, the
    mean over binary tasks of the frontier policy each task picks under a budget (train cost / cheapest LLM)."""
    from ls_backend.plots import FrontierPanel

    t3 = report.table3
    short = {m: m.replace("weighted majority", "WMV") for m in t3.methods}
    per_task: dict[str, Any] = {}
    for task in report.binary + report.multiclass:
        result = t3.frontiers[task]
        frontier = result.get("frontier") or []
        points = {
            short[row["method"]]: (float(row["relative_cost"]), float(row["f1"])) for row in result["rows"]
        }
        per_task[task] = FrontierPanel(
            np.array([p["test_relative_cost"] for p in frontier]),
            np.array([p["test_f1"] for p in frontier]),
            points,
        )
    panels: dict[str, Any] = {}
    budgets = np.linspace(1.0, len(report.llms) * 2.0, 60)
    chosen_cost, chosen_f1 = [], []
    usable = [t for t in report.binary if t3.frontiers[t].get("frontier")]
    if usable:
        for budget in budgets:
            costs, f1s = [], []
            for task in usable:
                pick = frontier_pick(t3.frontiers[task]["frontier"], budget)
                costs.append(pick["test_relative_cost"])
                f1s.append(pick["test_f1"])
            chosen_cost.append(float(np.mean(costs)))
            chosen_f1.append(float(np.mean(f1s)))
        mean_points = {
            short[m]: (float(np.mean([per_task[t].points[short[m]][0] for t in usable])),
                       float(np.mean([per_task[t].points[short[m]][1] for t in usable])))
            for m in t3.methods
        }  # fmt: skip
        panels["mean over binary tasks"] = FrontierPanel(
            np.array(chosen_cost), np.array(chosen_f1), mean_points
        )
    panels.update(per_task)
    return panels


# a method has one color in both student figures (its frontier and its served point too)
STUDENT_COLORS = {
    "student alone": "tab:blue",
    "LLM cascade": "tab:red",
    "LLM cascade frontier": "tab:red",
    "LLM cascade (served)": "tab:red",
    "cascade with the student": "tab:green",
    "cascade with the student frontier": "tab:green",
    "cascade with the student (served)": "tab:green",
}


def student_figures(
    study: AnswerStudy, llms: Sequence[str], figures_dir: Path, out_path: Path
) -> dict[str, str]:
    """Writes the learning curves and the cost frontiers with the student (those there is data for) into
    ``figures_dir``; returns each caption with its link relative to the report ``out_path``."""
    from ls_backend import plots
    from ls_backend.benchmark.answers import learning_curve, student_frontier, view_names

    n_tasks = len(view_names(study, "balanced"))
    written: dict[str, Path] = {}
    curve = learning_curve(study)
    if curve is not None:
        accuracy = {label: plots.BandCurve(curve.labels, rows[0], rows[1], rows[2])
                    for label, rows in curve.accuracy.items()}  # fmt: skip
        calls = {label: (curve.labels, values) for label, values in curve.llm_calls.items()}
        written[f"Learning curves ({n_tasks} balanced binary tasks): accuracy of the student alone, the LLM cascade "
                "and the cascade with the student (mean; band = per-task 25th-75th percentile), and LLM calls per "
                "item, against in-task labels"] = plots.learning_curves(
            accuracy, calls, figures_dir / LEARNING_CURVE_FILE, band="per-task 25th-75th percentile",
            colors=STUDENT_COLORS)  # fmt: skip
    frontier = student_frontier(study, llms)
    if frontier is not None:
        panels = {
            title: plots.LinesPanel(
                metric,
                {label: (c.relative_cost, getattr(c, field)) for label, c in frontier.curves.items()},
                {label: (cost, point[k]) for label, (cost, *point) in frontier.points.items()},
            )
            for title, metric, field, k in (("F1 (yes)", "F1 of yes (mean over tasks)", "f1", 0),
                                            ("accuracy", "accuracy (mean over tasks)", "accuracy", 1))
        }  # fmt: skip
        written[f"F1 and accuracy against cost with {frontier.labels} in-task labels ({n_tasks} balanced binary "
                "tasks): the cost frontiers of the LLM cascade and of the cascade with the student (budget picks per "
                f"task and draw, held-out means), cost relative to asking all {len(llms)} LLMs as in the table; "
                "points: the student, each LLM and the served configurations"] = plots.frontier_lines(
            panels, figures_dir / STUDENT_FRONTIER_FILE, xlabel=f"cost / asking all {len(llms)} LLMs (log scale)",
            colors=STUDENT_COLORS)  # fmt: skip
    return {
        caption: os.path.relpath(path, out_path.parent).replace(os.sep, "/")
        for caption, path in written.items()
    }
