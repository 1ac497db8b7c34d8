"""A project's label-free bias corrections, per LLM: what goes in front of its calibrator before any label.

``cascade.correction`` chooses (docs/server.md):

- ``CC`` (contextual calibration): the LLM scores the content-free inputs
  (:data:`ls_backend.calibration.CONTENT_FREE_TEXTS`) under the project's prompt once (through the score cache);
  the mean of their class probabilities is the bias.
- ``BC`` (batch calibration): the bias is estimated from the project's own items, which every ``/predict``
  scores anyway: the first ``bc_min_items`` texts the LLM scored under this prompt, then the first
  ``2 * bc_min_items``, ``4 * bc_min_items``, ... (a checkpoint each time the count doubles, so a version names a
  fixed sample and the estimate's standard error falls by a factor of about 1.4 at each step). Until the first
  checkpoint, CC stands in. The texts come from the score cache, keyed by the prompt's hash (which covers the
  question and the classes), so projects that ask the same question of the same LLM share one estimate. A
  costlier LLM sees only the items the cascade sends it, so its estimate is over those items.
- ``none``: no correction.

The state's ``tag`` (``cc``, ``bc200``, ... per LLM, joined by ``.``) is appended to the out-of-task model's
version, so Label Studio's model versions say which correction served; it is computed from counts alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ls_backend.calibration import CONTENT_FREE_TEXTS, BatchCalibration, BiasCorrection, ContextualCalibration
from ls_backend.llms.cache import ScoreCache

logger = logging.getLogger(__name__)


def bc_checkpoint(n_items: int, min_items: int) -> int | None:
    """The largest ``min_items * 2**j`` that is at most ``n_items`` (None below ``min_items``)."""
    if min_items < 1:
        raise ValueError(f"min_items must be >= 1, got {min_items}")
    if n_items < min_items:
        return None
    checkpoint = min_items
    while checkpoint * 2 <= n_items:
        checkpoint *= 2
    return checkpoint


@dataclass(frozen=True)
class LLMPrompt:
    """What identifies one LLM's scores of a project in the score cache."""

    llm: str
    revision: str
    prompt_hash: str


@dataclass(frozen=True)
class CorrectionState:
    """Each LLM's correction (None: none) and the tag the model version carries."""

    corrections: tuple[BiasCorrection | None, ...]
    tag: str


def correction_kinds(setting: str, counts: Sequence[int], min_items: int) -> list[str]:
    """Per LLM: ``none``, ``cc`` or ``bc<checkpoint>`` for the setting and how many items each LLM scored."""
    if setting == "none":
        return ["none"] * len(counts)
    if setting == "CC":
        return ["cc"] * len(counts)
    if setting != "BC":
        raise ValueError(f"unknown correction {setting!r}; expected none, CC or BC")
    kinds = []
    for n in counts:
        checkpoint = bc_checkpoint(n, min_items)
        kinds.append("cc" if checkpoint is None else f"bc{checkpoint}")
    return kinds


def tag_of(kinds: Sequence[str]) -> str:
    """The version tag: empty without any correction, else the kinds joined by ``.``."""
    return "" if all(k == "none" for k in kinds) else ".".join(kinds)


class ProjectCorrections:
    """Fitted corrections, memoized by (cache, LLM, revision, prompt, kind), so each is fitted once."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, LLMPrompt, str], BiasCorrection | None] = {}
        self._lock = threading.Lock()

    def kinds(self, setting: str, keys: Sequence[LLMPrompt], cache: ScoreCache, min_items: int) -> list[str]:
        """Per LLM, which correction serves now (cheap: counts in the score cache)."""
        counts = (
            [cache.count(k.llm, k.revision, k.prompt_hash, exclude=CONTENT_FREE_TEXTS) for k in keys]
            if setting == "BC"
            else [0] * len(keys)
        )
        return correction_kinds(setting, counts, min_items)

    def state(
        self,
        setting: str,
        keys: Sequence[LLMPrompt],
        cache: ScoreCache,
        min_items: int,
        score_content_free: Callable[[int], object],
    ) -> CorrectionState:
        """Each LLM's correction now. ``score_content_free(k)`` returns LLM k's class logits (m, C) of the
        content-free inputs (scored through the cache), for CC; an LLM that cannot score them gets none."""
        import numpy as np

        kinds = self.kinds(setting, keys, cache, min_items)
        corrections: list[BiasCorrection | None] = []
        for k, (key, kind) in enumerate(zip(keys, kinds, strict=True)):
            memo_key = (cache.path, key, kind)
            with self._lock:
                if memo_key in self._memo:
                    corrections.append(self._memo[memo_key])
                    continue
            correction: BiasCorrection | None = None
            if kind == "cc":
                try:
                    logits = np.asarray(score_content_free(k), dtype=np.float64)
                    correction = ContextualCalibration().fit(logits)
                except Exception:
                    logger.exception(
                        "LLM %s: no contextual calibration (content-free inputs failed)", key.llm
                    )
            elif kind.startswith("bc"):
                sample = cache.first_logits(
                    key.llm, key.revision, key.prompt_hash, int(kind[2:]), exclude=CONTENT_FREE_TEXTS
                )
                correction = BatchCalibration().fit(sample)
            with self._lock:
                self._memo[memo_key] = correction
            corrections.append(correction)
        return CorrectionState(tuple(corrections), tag_of(kinds))
