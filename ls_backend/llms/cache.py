"""A persistent score cache, so that refits and re-evaluations never ask an LLM twice about the same input.

The key is (LLM name, LLM revision, prompt template hash, sha256 of the item text); the value is the LLM's
answer (a class index), its class logits (a JSON list of floats: plain data; an infinite logit is written
as ``-Infinity``/``Infinity``, which Python's json reads back) and the cost of the call, plus the
time the entry was written. The prompt hash covers the question, the classes and their order, the template, the
few-shot examples and the text truncation, so a changed prompt or class order never reuses an old answer.

SQLite in WAL mode holds it: one table with a primary key on the key tuple, batched writes in one transaction
each, and a busy timeout, so several processes (e.g. two ``lwc score`` runs, or a scorer and a server) can share
one file. A connection is owned by one :class:`ScoreCache`; its methods are safe to call from several threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    llm TEXT NOT NULL,
    revision TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    answer INTEGER NOT NULL,
    logits TEXT NOT NULL,
    cost REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (llm, revision, prompt_hash, text_hash)
) WITHOUT ROWID
"""

# SQLite's default limit on bound parameters is 32766 (999 before 3.32); stay well below both.
_LOOKUP_CHUNK = 500


def text_hash(text: str) -> str:
    """The sha256 hex digest of an item's text (UTF-8), the text part of a cache key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedScore:
    """One cached LLM result for one item."""

    answer: int
    logits: np.ndarray
    cost: float
    created_at: float


class ScoreCache:
    """Cached answers, class logits and costs, keyed by (LLM, revision, prompt hash, text hash).

    Args:
        path: the SQLite file (created with its folder if missing), or ``":memory:"`` for a throwaway cache.
        timeout: seconds to wait for another process's write lock before failing.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        from ls_backend.files import open_cache_database

        self.path = str(path)
        self._lock = threading.Lock()
        self._conn = open_cache_database(self.path, SCHEMA, "score cache", timeout)

    def get_many(
        self, llm: str, revision: str, prompt_hash: str, texts: Sequence[str]
    ) -> list[CachedScore | None]:
        """The cached result for each text, aligned with ``texts`` (``None`` where it is not cached)."""
        hashes = [text_hash(t) for t in texts]
        found: dict[str, CachedScore] = {}
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    "SELECT text_hash, answer, logits, cost, created_at FROM scores "
                    f"WHERE llm = ? AND revision = ? AND prompt_hash = ? AND text_hash IN ({marks})",
                    (llm, revision, prompt_hash, *chunk),
                ).fetchall()
                for h, answer, logits, cost, created_at in rows:
                    found[h] = CachedScore(
                        int(answer),
                        np.asarray(json.loads(logits), dtype=np.float64),
                        float(cost),
                        float(created_at),
                    )
        return [found.get(h) for h in hashes]

    def put_many(
        self,
        llm: str,
        revision: str,
        prompt_hash: str,
        texts: Sequence[str],
        answers: np.ndarray,
        logits: np.ndarray,
        costs: np.ndarray,
    ) -> None:
        """Store one result per text in a single transaction (an existing entry for the same key is replaced)."""
        answers = np.asarray(answers)
        logits = np.asarray(logits, dtype=np.float64)
        costs = np.asarray(costs, dtype=np.float64)
        n = len(texts)
        if answers.shape != (n,) or costs.shape != (n,) or logits.ndim != 2 or logits.shape[0] != n:
            raise ValueError(
                f"put_many: {n} texts need answers ({n},), logits ({n}, C) and costs ({n},); got "
                f"{answers.shape}, {logits.shape}, {costs.shape}"
            )
        if not np.isfinite(costs).all() or (costs < 0).any():
            raise ValueError("put_many: costs must be finite and >= 0")
        if np.isnan(logits).any():
            raise ValueError("put_many: logits contain NaN")
        if n and ((answers < 0).any() or (answers >= logits.shape[1]).any()):
            raise ValueError(f"put_many: answers must be class indices in [0, {logits.shape[1]})")
        now = time.time()
        rows = [
            (llm, revision, prompt_hash, text_hash(t), int(a), json.dumps(row), float(c), now)
            for t, a, row, c in zip(texts, answers, logits.tolist(), costs, strict=True)
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def count(self, llm: str, revision: str, prompt_hash: str, exclude: Sequence[str] = ()) -> int:
        """How many distinct texts are cached for one (LLM, revision, prompt), leaving out the texts ``exclude``."""
        excluded = [text_hash(t) for t in exclude]
        marks = ",".join("?" * len(excluded))
        where = f" AND text_hash NOT IN ({marks})" if excluded else ""
        with self._lock:
            row = self._conn.execute(
                f"SELECT COUNT(*) FROM scores WHERE llm = ? AND revision = ? AND prompt_hash = ?{where}",
                (llm, revision, prompt_hash, *excluded),
            ).fetchone()
        return int(row[0])

    def first_logits(
        self, llm: str, revision: str, prompt_hash: str, limit: int, exclude: Sequence[str] = ()
    ) -> np.ndarray:
        """The class logits (m, C) of the first ``limit`` texts cached for one (LLM, revision, prompt), oldest
        first (ties by text hash), leaving out the texts ``exclude``: a fixed sample once ``limit`` are there."""
        excluded = [text_hash(t) for t in exclude]
        marks = ",".join("?" * len(excluded))
        where = f" AND text_hash NOT IN ({marks})" if excluded else ""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT logits FROM scores WHERE llm = ? AND revision = ? AND prompt_hash = ?{where} "
                "ORDER BY created_at, text_hash LIMIT ?",
                (llm, revision, prompt_hash, *excluded, int(limit)),
            ).fetchall()
        return np.array([json.loads(r[0]) for r in rows], dtype=np.float64).reshape(len(rows), -1)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
