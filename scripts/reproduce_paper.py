#!/usr/bin/env python
"""Reproduce the paper's Tables 1, 2, 3 and 5 from the committed scores of the public benchmark: the same command
as ``lwc reproduce`` (ls_backend/cli/reproduce.py; ``--help`` lists the options, docs/benchmark/README.md explains
them)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a fresh clone without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
