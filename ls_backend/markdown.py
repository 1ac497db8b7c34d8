"""Markdown for the generated reports: fixed-decimal numbers and aligned tables (stable bytes for a stable input)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def fmt(value: Any, decimals: int = 4) -> str:
    """A number with fixed decimals; ``-`` for None, NaN and infinities."""
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        return "-" if not math.isfinite(float(value)) else f"{float(value):.{decimals}f}"
    return str(value)


def pct(value: float) -> str:
    """A relative change as a signed percentage with one decimal."""
    return "-" if not math.isfinite(value) else f"{value * 100:+.1f}%"


def pval(p: float) -> str:
    """A p-value with four decimals, ``< 0.0001`` below that."""
    if not math.isfinite(p):
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> str:
    """A pipe table with padded columns; ``right`` aligns columns right (default: all but the first)."""
    right = right or [False] + [True] * (len(header) - 1)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "| " + " | ".join(padded) + " |"

    separator = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True))
        + "|"
    )
    return "\n".join([line(header), separator, *(line(r) for r in rows)])
