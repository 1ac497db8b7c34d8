#!/usr/bin/env python
"""Measure each benchmark LLM's seconds per item on a quiet machine, every LLM on the same items, interleaved:
:mod:`ls_backend.benchmark.measure_costs` (``--help`` lists the options, docs/benchmark/README.md explains them)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a fresh clone without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.benchmark.measure_costs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
