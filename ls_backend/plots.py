"""Figures of the reproduction report (matplotlib, Agg backend): reliability diagrams, ACE against the number of
calibration shots, the cascade's F1/cost frontier, the learning curves of the student and the cascades, and cost
frontiers of several cascades side by side.

Each function takes plain arrays or small dataclasses, draws one figure of a size fixed by its number of panels
(``panel_size`` inches x ``dpi``; no tight bounding box, so the pixel size is predictable) and writes a PNG without
date or software metadata. Nothing here computes a metric: the caller passes what to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.metrics import ReliabilityCurve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PNG_METADATA: dict[str, Any] = {"Software": None}
"""No software/version line in the PNG, so the files differ only when the drawing does."""

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


@dataclass(frozen=True)
class AceCurve:
    """One method's ACE across shot counts: the mean over tasks and the quartiles of the per-task values."""

    shots: np.ndarray
    mean: np.ndarray
    q25: np.ndarray
    q75: np.ndarray

    def __post_init__(self) -> None:
        sizes = {np.shape(self.shots), np.shape(self.mean), np.shape(self.q25), np.shape(self.q75)}
        if len(sizes) != 1 or np.ndim(self.shots) != 1 or np.size(self.shots) == 0:
            raise ValueError("AceCurve: shots, mean, q25 and q75 must be 1-D arrays of one non-zero length")


@dataclass(frozen=True)
class FrontierPanel:
    """A cascade's frontier (relative cost and F1 of each frontier policy, cheapest first) and fixed policies
    drawn as labeled points ``label -> (relative cost, F1)``."""

    cost: np.ndarray
    f1: np.ndarray
    points: Mapping[str, tuple[float, float]]

    def __post_init__(self) -> None:
        if np.ndim(self.cost) != 1 or np.shape(self.cost) != np.shape(self.f1):
            raise ValueError("FrontierPanel: cost and f1 must be 1-D arrays of the same length")


@dataclass(frozen=True)
class BandCurve:
    """One method's values across an x axis: the mean and a band (e.g. per-task quartiles) around it."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        sizes = {np.shape(self.x), np.shape(self.mean), np.shape(self.low), np.shape(self.high)}
        if len(sizes) != 1 or np.ndim(self.x) != 1 or np.size(self.x) == 0:
            raise ValueError("BandCurve: x, mean, low and high must be 1-D arrays of one non-zero length")


@dataclass(frozen=True)
class LinesPanel:
    """One panel of :func:`frontier_lines`: curves ``label -> (x, y)`` (drawn in x order) and labeled points
    ``label -> (x, y)``, with the y axis' name."""

    ylabel: str
    lines: Mapping[str, tuple[np.ndarray, np.ndarray]]
    points: Mapping[str, tuple[float, float]]

    def __post_init__(self) -> None:
        for label, (x, y) in self.lines.items():
            if np.ndim(x) != 1 or np.shape(x) != np.shape(y):
                raise ValueError(f"LinesPanel: line {label!r} needs 1-D x and y of the same length")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(n_panels: int, max_columns: int) -> tuple[int, int]:
    columns = min(n_panels, max_columns)
    return math.ceil(n_panels / columns), columns


def _new_figure(
    n_panels: int, max_columns: int, panel_size: tuple[float, float], extra_height: float = 0.0
) -> tuple[Figure, list[Axes]]:
    plt = _pyplot()
    rows, columns = _grid(n_panels, max_columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel_size[0] * columns, panel_size[1] * rows + extra_height),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for unused in flat[n_panels:]:
        unused.set_visible(False)
    return figure, flat[:n_panels]


def _save(figure: Figure, path: str | Path, dpi: int) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=dpi, format="png", metadata=PNG_METADATA)
    finally:
        plt.close(figure)
    return path


def _check_panels(panels: Mapping[str, Any], what: str) -> None:
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError(f"{what}: needs at least one panel (a non-empty mapping of title -> data)")
    for title, series in panels.items():
        if isinstance(series, Mapping) and not series:
            raise ValueError(f"{what}: panel {title!r} has nothing to draw")


def reliability_diagram(
    curves: Mapping[str, Mapping[str, ReliabilityCurve]],
    path: str | Path,
    *,
    title: str | None = None,
    max_columns: int = 3,
    panel_size: tuple[float, float] = (4.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Hit rate against mean score per bin, one panel per key of ``curves`` (e.g. per LLM), one line per series
    (e.g. "uncalibrated", "calibrated"), with the diagonal of perfect calibration; empty bins are not drawn."""
    _check_panels(curves, "reliability_diagram")
    figure, axes = _new_figure(len(curves), max_columns, panel_size)
    for ax, (panel, series) in zip(axes, curves.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
        for k, (label, curve) in enumerate(series.items()):
            if not isinstance(curve, ReliabilityCurve):
                raise TypeError(f"reliability_diagram: {panel!r}/{label!r} is not a metrics.ReliabilityCurve")
            keep = ~(np.isnan(curve.mean_score) | np.isnan(curve.hit_rate))
            ax.plot(
                curve.mean_score[keep],
                curve.hit_rate[keep],
                marker=_MARKERS[k % len(_MARKERS)],
                color=_COLORS[k % len(_COLORS)],
                label=label,
            )
        ax.set(
            xlim=(0, 1), ylim=(0, 1), xlabel="mean confidence in the bin", ylabel="share of correct answers"
        )
        ax.set_title(panel, fontsize=10)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if title:
        figure.suptitle(title)
    return _save(figure, path, dpi)


def ace_vs_shots(
    panels: Mapping[str, Mapping[str, AceCurve]],
    path: str | Path,
    *,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
    max_columns: int = 3,
    panel_size: tuple[float, float] = (4.2, 3.4),
    dpi: int = 100,
) -> Path:
    """ACE against shots, one panel per key of ``panels`` (e.g. per LLM and calibrator), one line per method
    (e.g. sampler U/SE/IE) with its mean and a band from its per-task 25th to 75th percentile; ``baselines``
    (panel -> label -> ACE) are drawn as horizontal lines (e.g. uncalibrated, SIM-OOT)."""
    _check_panels(panels, "ace_vs_shots")
    figure, axes = _new_figure(len(panels), max_columns, panel_size)
    for ax, (panel, methods) in zip(axes, panels.items(), strict=True):
        for k, (label, curve) in enumerate(methods.items()):
            color = _COLORS[k % len(_COLORS)]
            ax.fill_between(curve.shots, curve.q25, curve.q75, color=color, alpha=0.15, linewidth=0)
            ax.plot(curve.shots, curve.mean, marker=_MARKERS[k % len(_MARKERS)], color=color, label=label)
        for k, (label, value) in enumerate(((baselines or {}).get(panel) or {}).items()):
            if value is not None and math.isfinite(value):
                ax.axhline(value, color="0.3", linestyle=("--", ":", "-.")[k % 3], linewidth=1, label=label)
        ax.set_xscale("log")
        shots = sorted({int(s) for curve in methods.values() for s in curve.shots})
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
        ax.set(xlabel="calibration shots (labeled items of the task)", ylabel="ACE (mean over tasks)")
        ax.set_ylim(bottom=0)
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    return _save(figure, path, dpi)


def cost_frontier(
    panels: Mapping[str, FrontierPanel],
    path: str | Path,
    *,
    title: str | None = None,
    max_columns: int = 4,
    panel_size: tuple[float, float] = (3.6, 3.0),
    dpi: int = 100,
    frontier_label: str = "cascade frontier (cost-aware lambda)",
) -> Path:
    """F1 against cost relative to the cheapest LLM, one panel per key of ``panels`` (e.g. per task), the
    frontier as a line and the fixed policies as labeled markers (one shared legend below the panels)."""
    _check_panels(panels, "cost_frontier")
    labels: list[str] = []
    for panel in panels.values():
        labels += [label for label in panel.points if label not in labels]
    n_legend_rows = math.ceil((len(labels) + 1) / 3)
    figure, axes = _new_figure(len(panels), max_columns, panel_size, extra_height=0.25 * n_legend_rows + 0.3)
    handles: dict[str, Any] = {}
    for ax, (name, panel) in zip(axes, panels.items(), strict=True):
        if np.size(panel.cost):
            order = np.argsort(panel.cost, kind="stable")
            (line,) = ax.plot(
                np.asarray(panel.cost)[order],
                np.asarray(panel.f1)[order],
                color="0.25",
                marker=".",
                markersize=4,
                linewidth=1.2,
            )
            handles.setdefault(frontier_label, line)
        for label, (cost, f1) in panel.points.items():
            k = labels.index(label)
            handles.setdefault(
                label,
                ax.scatter(
                    [cost],
                    [f1],
                    color=_COLORS[k % len(_COLORS)],
                    marker=_MARKERS[k % len(_MARKERS)],
                    s=36,
                    zorder=3,
                ),
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("cost / cheapest LLM", fontsize=8)
        ax.set_ylabel("F1", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    figure.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=3, fontsize=8, frameon=False
    )
    if title:
        figure.suptitle(title)
    return _save(figure, path, dpi)


def learning_curves(
    accuracy: Mapping[str, BandCurve],
    llm_calls: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    band: str = "25th-75th percentile over tasks",
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (4.6, 3.6),
    dpi: int = 100,
) -> Path:
    """Two panels against the number of labels (log scale): each method's mean accuracy with its band (``band``
    names it in the axis label), and the LLM calls per item of the methods in ``llm_calls`` (label -> (labels,
    calls)). A method keeps its color and marker in both panels; ``colors`` (label -> matplotlib color) fixes some,
    e.g. to match another figure."""
    _check_panels(accuracy, "learning_curves")
    order = list(dict.fromkeys([*accuracy, *llm_calls]))
    figure, (left, right) = _new_figure(2, 2, panel_size)
    counts: set[int] = set()
    for label, curve in accuracy.items():
        k = order.index(label)
        color = _color(label, k, colors)
        left.fill_between(curve.x, curve.low, curve.high, color=color, alpha=0.15, linewidth=0)
        left.plot(curve.x, curve.mean, marker=_MARKERS[k % len(_MARKERS)], color=color, label=label)
        counts |= {int(x) for x in curve.x}
    for label, (x, calls) in llm_calls.items():
        k = order.index(label)
        right.plot(x, calls, marker=_MARKERS[k % len(_MARKERS)], color=_color(label, k, colors), label=label)
        counts |= {int(v) for v in x}
    ticks = sorted(counts)
    for ax, ylabel in (
        (left, f"accuracy (mean; band: {band})"),
        (right, "LLM calls per item (mean over tasks)"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("in-task labels", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    right.set_ylim(bottom=0)
    if title:
        figure.suptitle(title)
    return _save(figure, path, dpi)


def frontier_lines(
    panels: Mapping[str, LinesPanel],
    path: str | Path,
    *,
    xlabel: str,
    log_x: bool = True,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    max_columns: int = 2,
    panel_size: tuple[float, float] = (4.6, 3.6),
    dpi: int = 100,
) -> Path:
    """Several frontiers per panel (lines) with labeled points, one panel per key of ``panels`` (e.g. per
    metric), one shared legend below; a label keeps its color and marker across panels (``colors``, label ->
    matplotlib color, fixes some). A log x axis is labeled at 1, 2 and 5 times the powers of ten, as plain numbers."""
    from matplotlib import ticker

    _check_panels(panels, "frontier_lines")
    labels: list[str] = []
    for panel in panels.values():
        labels += [label for label in [*panel.lines, *panel.points] if label not in labels]
    n_legend_rows = math.ceil(len(labels) / 2)
    figure, axes = _new_figure(len(panels), max_columns, panel_size, extra_height=0.25 * n_legend_rows + 0.3)
    handles: dict[str, Any] = {}
    for ax, (name, panel) in zip(axes, panels.items(), strict=True):
        for label, (x, y) in panel.lines.items():
            k = labels.index(label)
            order = np.argsort(x, kind="stable")
            (line,) = ax.plot(np.asarray(x)[order], np.asarray(y)[order], color=_color(label, k, colors),
                              marker=".", markersize=3, linewidth=1.3)  # fmt: skip
            handles.setdefault(label, line)
        for label, (point_x, point_y) in panel.points.items():
            k = labels.index(label)
            handles.setdefault(label, ax.scatter([point_x], [point_y], color=_color(label, k, colors),
                                                 marker=_MARKERS[k % len(_MARKERS)], s=40, zorder=3))  # fmt: skip
        if log_x:
            ax.set_xscale("log")
            # matplotlib labels the minor ticks of a short log axis too, and they overlap
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    figure.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=2, fontsize=8, frameon=False
    )
    if title:
        figure.suptitle(title)
    return _save(figure, path, dpi)


def _color(label: str, k: int, colors: Mapping[str, str] | None) -> str:
    return colors[label] if colors and label in colors else _COLORS[k % len(_COLORS)]


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    header = Path(path).read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def expected_size(
    n_panels: int, max_columns: int, panel_size: Sequence[float], dpi: int, extra_height: float = 0.0
) -> tuple[int, int]:
    """The pixel size a figure of ``n_panels`` panels gets (what the functions above produce)."""
    rows, columns = _grid(n_panels, max_columns)
    return round(panel_size[0] * columns * dpi), round((panel_size[1] * rows + extra_height) * dpi)
