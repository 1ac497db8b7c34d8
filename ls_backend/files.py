"""Small file helpers shared by the server and the scripts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_temp_beside(path: str | Path, text: str, durable: bool = False) -> Path:
    """``text`` in a new temporary file in ``path``'s folder (same file system, so a rename or link of it is
    atomic), named to be skipped by listings (a leading dot); ``durable`` fsyncs it. The caller renames or links
    it into place, or unlinks it."""
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def fsync_directory(path: str | Path) -> None:
    """Make the renames and links in a folder survive a power cut (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old file or the new one, never half of it (a
    temporary file renamed over it); ``durable`` also fsyncs the file and its folder, for state that must survive
    a power cut. Raises OSError as ``open`` would; nothing is left behind on failure."""
    temp = write_temp_beside(path, text, durable)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(Path(path).parent)


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


def home_as_tilde(argument: str) -> str:
    """A command-line argument as a record keeps it: the home folder written as ``~``, not this machine's path."""
    home = str(Path.home())
    return "~" + argument[len(home) :] if argument == home or argument.startswith(home + "/") else argument
