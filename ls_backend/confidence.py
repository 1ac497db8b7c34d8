"""The paper's confidence score, steps 1-4, vectorized over a batch of items.

1. class logits: for each class, the largest token logit over the class's matching tokens ("yes", " Yes", ...)
   and over the output positions (:func:`class_logits`);
2. softmax over the classes (:func:`softmax`);
3. optionally a calibrator on the class logits before the softmax (:func:`confidence_scores`);
4. the confidence score is the probability of the class the LLM answered (:func:`answer_scores`).

Pure numpy; no I/O. Torch tensors are accepted as input and converted to numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np


class ProbabilityCalibrator(Protocol):
    """What :func:`confidence_scores` needs from a calibrator (see :mod:`ls_backend.calibration`)."""

    def predict_proba(self, logits: np.ndarray) -> np.ndarray: ...


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A float numpy array from a numpy array, a nested sequence or a torch tensor (without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        # torch: bf16/fp16 and tensors that require grad cannot go through np.asarray directly.
        x = x.detach().cpu().float().numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}") from e
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return array


def _check_token_id_sets(class_token_ids: Sequence[Sequence[int]], vocab_size: int) -> list[np.ndarray]:
    if isinstance(class_token_ids, (str, bytes)) or not isinstance(class_token_ids, Sequence | np.ndarray):
        raise TypeError("class_token_ids must be a sequence with one sequence of token ids per class")
    if len(class_token_ids) == 0:
        raise ValueError("class_token_ids is empty: at least one class is needed")
    id_sets = []
    for c, ids in enumerate(class_token_ids):
        if isinstance(ids, (str, bytes, int, np.integer)):
            raise TypeError(f"class {c}: expected a sequence of token ids, got {type(ids).__name__}")
        array = np.asarray(ids)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"class {c}: needs a non-empty flat list of token ids, got shape {array.shape}")
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"class {c}: token ids must be integers, got dtype {array.dtype}")
        out_of_range = array[(array < 0) | (array >= vocab_size)]
        if out_of_range.size:
            raise ValueError(
                f"class {c}: token id(s) {out_of_range.tolist()} outside the vocabulary [0, {vocab_size})"
            )
        id_sets.append(array.astype(np.intp))
    return id_sets


def class_logits(
    token_logits: Any, class_token_ids: Sequence[Sequence[int]], mask: Any | None = None
) -> np.ndarray:
    """Step 1 of the paper: each class's logit is the max over its matching tokens and over output positions.

    Args:
        token_logits: shape (n, V) for one answer position, or (n, T, V) for T output positions.
        class_token_ids: C sequences of token ids; class c matches any of ``class_token_ids[c]``.
        mask: bool (n, T), True at real output positions (only with 3-D ``token_logits``); padded
            positions never win. Every item needs at least one real position.

    Returns:
        Class logits of shape (n, C), in float64.

    Raises:
        ValueError: bad shapes, token ids outside the vocabulary, an empty class, an item without a real
            position, a NaN (or +inf) logit of a class token at a real position.
    """
    logits = _to_numpy(token_logits, "token_logits")
    if logits.ndim == 2:
        if mask is not None:
            raise ValueError("mask is only meaningful with token_logits of shape (n, T, V); got (n, V)")
        logits = logits[:, None, :]
    elif logits.ndim != 3:
        raise ValueError(f"token_logits must have shape (n, V) or (n, T, V), got {logits.shape}")
    n, n_positions, vocab_size = logits.shape
    if n == 0 or n_positions == 0 or vocab_size == 0:
        raise ValueError(f"token_logits is empty (shape {logits.shape})")
    id_sets = _check_token_id_sets(class_token_ids, vocab_size)

    all_ids = np.concatenate(id_sets)
    gathered = logits[:, :, all_ids].astype(
        np.float64
    )  # (n, T, K): only the class tokens, never the vocabulary
    if mask is not None:
        real = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
        if real.dtype != np.bool_:
            raise TypeError(f"mask must be boolean, got dtype {real.dtype}")
        if real.shape != (n, n_positions):
            raise ValueError(
                f"mask must have shape {(n, n_positions)} to match token_logits, got {real.shape}"
            )
        empty = np.flatnonzero(~real.any(axis=1))
        if empty.size:
            raise ValueError(f"item(s) {empty[:10].tolist()} have no real output position in mask")
        gathered = np.where(real[:, :, None], gathered, -np.inf)
    if np.isnan(gathered).any():
        items = np.flatnonzero(np.isnan(gathered).any(axis=(1, 2)))
        raise ValueError(
            f"NaN token logit for a class token at a real position in item(s) {items[:10].tolist()}"
        )
    per_token = gathered.max(axis=1)  # (n, K)
    starts = np.cumsum([0] + [ids.size for ids in id_sets[:-1]])
    result = np.maximum.reduceat(per_token, starts, axis=1)
    if not np.isfinite(result).all():
        items = np.flatnonzero(~np.isfinite(result).all(axis=1))
        raise ValueError(
            f"non-finite class logit in item(s) {items[:10].tolist()}: pass raw logits, not logits already "
            "filtered by top-k/top-p or a constraint (which sets them to -inf)"
        )
    return result


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Step 2 of the paper: the softmax over classes, computed stably (shifted by the max along ``axis``)."""
    x = _to_numpy(logits, "logits")
    if x.size == 0:
        raise ValueError(f"logits is empty (shape {x.shape})")
    shifted = x - x.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def _check_answers(answers: Any, n: int, n_classes: int) -> np.ndarray:
    array = np.asarray(answers)
    if array.shape != (n,):
        raise ValueError(f"answers must have shape {(n,)} (one per item), got {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"answers must be integer class indices, got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= n_classes)]
    if bad.size:
        raise ValueError(f"answer(s) {bad[:10].tolist()} outside the classes [0, {n_classes})")
    return array.astype(np.intp)


def answer_scores(probs: Any, answers: Any | None = None) -> np.ndarray:
    """Step 4 of the paper: the confidence score is the probability of the answered class.

    Args:
        probs: class probabilities, shape (n, C).
        answers: the answered class index per item, shape (n,); None means the most probable class.

    Returns:
        Scores of shape (n,).
    """
    p = _to_numpy(probs, "probs")
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have shape (n, C) with n, C >= 1, got {p.shape}")
    index = p.argmax(axis=1) if answers is None else _check_answers(answers, p.shape[0], p.shape[1])
    return p[np.arange(p.shape[0]), index]


def confidence_scores(
    logits: Any, answers: Any | None = None, calibrator: ProbabilityCalibrator | None = None
) -> np.ndarray:
    """Steps 2-4 of the paper: (calibrated) softmax of the class logits, then the score of the LLM's answer.

    Args:
        logits: class logits, shape (n, C).
        answers: the LLM's answer per item; None means the argmax of the *uncalibrated* ``logits`` (the class
            the LLM answered), which a calibrator that changes the ranking (e.g. vector scaling) does not move.
        calibrator: anything with ``predict_proba(logits)``; None means the plain softmax.

    Returns:
        Scores of shape (n,).
    """
    x = _to_numpy(logits, "logits")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"logits must have shape (n, C) with n, C >= 1, got {x.shape}")
    if np.isnan(x).any():
        raise ValueError("logits contain NaN")
    if answers is None:
        answers = x.argmax(axis=1)
    probs = softmax(x) if calibrator is None else np.asarray(calibrator.predict_proba(x))
    return answer_scores(probs, answers)


def spelling_variants(name: str) -> list[str]:
    """The spellings of a class word an LLM may answer with: as given, lower, Capitalized, UPPER, Title case,
    each with and without a leading space (``"yes"`` -> ``"yes", " yes", "Yes", " Yes", "YES", " YES"``)."""
    word = name.strip()
    cases = [word, word.lower(), word[:1].upper() + word[1:].lower(), word.upper(), word.title()]
    unique = list(dict.fromkeys(cases))
    return [prefix + case for case in unique for prefix in ("", " ")]


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        encoded = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # tokenizers.Tokenizer takes add_special_tokens too; a plain callable may not
        encoded = tokenizer.encode(text)
    ids = encoded.ids if hasattr(encoded, "ids") else encoded  # tokenizers.Encoding vs a list of ids
    return [int(i) for i in ids]


def _decode(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id]))


def _special_ids(tokenizer: Any) -> set[int]:
    """The unknown-word and other special tokens: a spelling that encodes to one of them is not matched."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", None) or []}
    unk_token = getattr(getattr(tokenizer, "model", None), "unk_token", None)  # a tokenizers.Tokenizer
    if isinstance(unk_token, str) and hasattr(tokenizer, "token_to_id"):
        unk_id = tokenizer.token_to_id(unk_token)
        if unk_id is not None:
            ids.add(int(unk_id))
    return ids


CLASS_MATCHING_RULE = "first-token-of-name,single-token-variants"
"""Names the rule of :func:`class_token_ids`; adapters add it to their revision so cached scores follow it."""


def class_token_ids(
    tokenizer: Any,
    classes: Sequence[str],
    variants: Callable[[str], Iterable[str]] = spelling_variants,
) -> list[list[int]]:
    """Each class's matching token ids, for step 1 of the paper: the first token of each spelling variant.

    A class name that the tokenizer splits into several tokens is represented by its FIRST token (the token
    the LLM must emit first to answer that class); leading tokens that decode to whitespace only (e.g. a
    SentencePiece "▁") are skipped, and a spelling that starts with the unknown-word token is not matched.
    Only the name as given (with or without a leading space) may count by its first token; another spelling
    (a case variant) counts only when it is a single token, because a fragment such as "Y" of "YES" also
    starts unrelated words ("You") and would lend the class their probability. If a token matches two classes (their first tokens collide, e.g.
    "entertainment" and "entity" both starting with "ent"), the classes cannot be told apart from one output
    position and a ValueError names them: rename the classes or pass other ``variants``.

    Args:
        tokenizer: a Hugging Face tokenizer (``encode(text, add_special_tokens=False)`` and ``decode(ids)``),
            or a ``tokenizers.Tokenizer``.
        classes: the class names, in order.
        variants: spellings to match per class name (default :func:`spelling_variants`).

    Returns:
        C sorted lists of distinct token ids.
    """
    if isinstance(classes, str) or len(classes) == 0:
        raise ValueError("classes must be a non-empty sequence of class names")
    names = [str(c) for c in classes]
    if any(not name.strip() for name in names):
        raise ValueError(f"class names must be non-empty: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct: {names}")
    special = _special_ids(tokenizer)
    owner: dict[int, tuple[str, str]] = {}
    result: list[list[int]] = []
    for name in names:
        ids: set[int] = set()
        for spelling in variants(name):
            tokens = [
                t for t in _encode(tokenizer, spelling) if t in special or _decode(tokenizer, t).strip()
            ]
            if not tokens or tokens[0] in special:  # the vocabulary does not know this spelling
                continue
            if len(tokens) > 1 and spelling.strip() != name.strip():
                continue
            first = tokens[0]
            previous = owner.get(first)
            if previous is not None and previous[0] != name:
                raise ValueError(
                    f"classes {previous[0]!r} and {name!r} share the token {first} "
                    f"({_decode(tokenizer, first)!r}, first token of {previous[1]!r} and of {spelling!r}): "
                    "they cannot be told apart from one output position; rename a class"
                )
            owner[first] = (name, spelling)
            ids.add(first)
        if not ids:
            raise ValueError(f"class {name!r}: the tokenizer gives no token for any of its spellings")
        result.append(sorted(ids))
    return result
