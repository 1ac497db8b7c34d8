"""Small file helpers shared by the server and the scripts."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_cache_database(path: str, schema: str, what: str, timeout: float = 60.0) -> sqlite3.Connection:
    """A cache's SQLite connection, shared across threads in autocommit mode: the file (and its folder) created if
    missing, WAL with ``synchronous=NORMAL`` (a cache may lose its last writes to a power cut, never its
    consistency), and ``schema`` applied; a file that is not a usable database is a ValueError naming ``what``."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(schema)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ValueError(f"{what} {path}: not a usable SQLite database ({e})") from None
    return conn
