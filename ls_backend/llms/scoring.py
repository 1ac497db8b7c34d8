"""Scoring many items with an LLM: the cached batch loop, and the retry policy the remote adapters share.

:func:`score_items` looks every text up in the :class:`~ls_backend.llms.cache.ScoreCache` first, asks the LLM
only about the misses (each distinct text once), in batches, and writes each batch to the cache as soon as it
is done, so that an interrupted run resumes where it stopped and a re-run costs nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ls_backend.llms.base import LLM, LLMError, ScoredBatch
from ls_backend.llms.cache import ScoreCache, text_hash

if TYPE_CHECKING:
    from ls_backend.llms.prompts import PromptTemplate

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RemoteAuthError(LLMError):
    """The remote service rejected the credentials (missing, invalid, expired or without access)."""


class RemoteModelNotFoundError(LLMError):
    """The remote service does not know the requested model id (or the endpoint does not exist)."""


class RemoteRequestError(LLMError):
    """The remote service rejected a request as malformed, or kept failing after every retry."""


class TransientError(Exception):
    """A failure worth retrying (rate limit, server busy, timeout); raised by a call given to RetryPolicy."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient failures of remote calls.

    Attempt ``k`` (0-based) that fails with a :class:`TransientError` waits a uniform random time in
    ``[0, min(max_delay, base_delay * 2**k)]`` (or the server's ``Retry-After``, if longer) before the next
    attempt; after ``max_attempts`` attempts the last error is raised as :class:`RemoteRequestError`.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy: max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy: delays must be >= 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**attempt))

    def call(
        self,
        fn: Callable[[], T],
        what: str,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> T:
        """Run ``fn`` until it returns, retrying on :class:`TransientError` with backoff."""
        rng = rng or random.Random()
        for attempt in range(self.max_attempts):
            try:
                return fn()
            except TransientError as e:
                if attempt + 1 == self.max_attempts:
                    raise RemoteRequestError(
                        f"{what}: gave up after {self.max_attempts} attempts: {e}"
                    ) from e
                wait = max(self.delay(attempt, rng), e.retry_after or 0.0)
                logger.warning(
                    "%s: %s; retry %d/%d in %.1f s", what, e, attempt + 1, self.max_attempts - 1, wait
                )
                sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def from_value(cls, value: RetryPolicy | dict[str, Any] | None) -> RetryPolicy:
        """A policy from a config mapping such as ``{max_attempts: 4, base_delay: 1.0}`` (``None``: defaults)."""
        if value is None:
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"retry: expected a mapping like {{max_attempts: 4}}, got {value!r}")
        unknown = set(value) - {"max_attempts", "base_delay", "max_delay"}
        if unknown:
            raise ValueError(
                f"retry: unknown field(s) {sorted(unknown)}; expected max_attempts, base_delay, max_delay"
            )
        return cls(**value)


def score_items(
    llm: LLM,
    prompt: PromptTemplate,
    texts: Sequence[str],
    cache: ScoreCache | None = None,
    batch_size: int = 16,
    progress: bool | str = False,
) -> ScoredBatch:
    """Answers, class logits and costs of ``llm`` for every text, aligned with ``texts``.

    Cached results are reused; the LLM sees each distinct uncached text once, ``batch_size`` texts per call, and
    every finished batch is stored in ``cache`` at once. ``progress`` shows a tqdm bar (a string is its label).
    The result's ``meta`` says how many items came from the cache (``n_cached``), how many LLM calls were made
    (``n_called``, distinct texts sent) and the LLM's wall-clock seconds (``seconds``); list-valued meta of the
    LLM's own batches (e.g. per-item flags) is joined in the order of the texts sent.
    """
    if batch_size < 1:
        raise ValueError(f"score_items: batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    if not texts:
        raise ValueError("score_items: no texts to score")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"score_items: texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}"
        )
    n_classes = len(prompt.classes)
    prompt_hash = prompt.hash()
    n = len(texts)
    answers = np.zeros(n, dtype=np.int64)
    logits = np.zeros((n, n_classes), dtype=np.float64)
    costs = np.zeros(n, dtype=np.float64)

    cached = cache.get_many(llm.name, llm.revision, prompt_hash, texts) if cache is not None else [None] * n
    for i, hit in enumerate(cached):
        if hit is not None:
            if hit.logits.shape != (n_classes,):
                raise ValueError(
                    f"score cache entry for LLM {llm.name!r} has {hit.logits.size} logits, the prompt has "
                    f"{n_classes} classes: the cache is inconsistent with the prompt hash"
                )
            answers[i], logits[i], costs[i] = hit.answer, hit.logits, hit.cost
    # Each distinct uncached text is sent once; positions_of maps it back to every place it occurs.
    positions_of: dict[str, list[int]] = {}
    for i, hit in enumerate(cached):
        if hit is None:
            positions_of.setdefault(text_hash(texts[i]), []).append(i)
    to_send = [texts[positions[0]] for positions in positions_of.values()]
    n_cached = n - sum(len(p) for p in positions_of.values())

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n, desc=progress if isinstance(progress, str) else llm.name, unit="item", leave=False
        )
        bar.update(n_cached)
    batches: list[ScoredBatch] = []
    started = time.perf_counter()
    try:
        for start in range(0, len(to_send), batch_size):
            chunk = to_send[start : start + batch_size]
            batch = llm.score(chunk, prompt)
            if len(batch) != len(chunk) or batch.logits.shape[1] != n_classes:
                raise LLMError(
                    f"LLM {llm.name!r} returned {len(batch)} results with {batch.logits.shape[1]} classes for "
                    f"{len(chunk)} texts and {n_classes} classes"
                )
            if cache is not None:
                cache.put_many(
                    llm.name, llm.revision, prompt_hash, chunk, batch.answers, batch.logits, batch.costs
                )
            for j, text in enumerate(chunk):
                positions = positions_of[text_hash(text)]
                answers[positions], logits[positions], costs[positions] = (
                    batch.answers[j],
                    batch.logits[j],
                    batch.costs[j],
                )
            batches.append(batch)
            if bar is not None:
                bar.update(sum(len(positions_of[text_hash(t)]) for t in chunk))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    meta: dict[str, Any] = ScoredBatch.concatenate(batches).meta if batches else {}
    meta.update(n_cached=n_cached, n_called=len(to_send), seconds=seconds)
    return ScoredBatch(answers=answers, logits=logits, costs=costs, meta=meta)
