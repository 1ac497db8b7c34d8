#!/usr/bin/env python
"""Write docs/server.md's table "Who may set what" from the configuration's models and its two tables of who may
set which key (``ls_backend/server/config.py``); ``--check`` only says whether the docs are up to date.

    .venv/bin/python scripts/write_settings_table.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a fresh clone without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from ls_backend.server.config import settings_table  # noqa: E402

DOC = REPO_ROOT / "docs" / "server.md"
HEADING = "### Who may set what"
TABLE_START = "\n\n| key |"


def with_table(text: str, table: str) -> str:
    """``text`` with the table under :data:`HEADING` replaced by ``table``."""
    before, heading, rest = text.partition(HEADING)
    if not heading or TABLE_START not in rest:
        raise ValueError(f"{DOC.name} has no table under {HEADING!r}")
    intro, _, after = rest.partition(TABLE_START)
    _, _, tail = after.partition("\n\n")
    return before + heading + intro + "\n\n" + table + "\n\n" + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the docs' table is not the models'")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    updated = with_table(text, settings_table())
    if args.check:
        print("up to date" if updated == text else f"{DOC} is out of date: run {Path(__file__).name}")
        return 0 if updated == text else 1
    DOC.write_text(updated, encoding="utf-8")
    print(f"wrote the table of {DOC.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
