"""What every LLM adapter returns and how the cost of a call is counted.

An adapter (Hugging Face local, Bedrock, OpenAI-compatible, ...) is anything with a ``name``, a ``revision``, a
``cost_model`` and ``score(texts, prompt) -> ScoredBatch``: the class the LLM answered for each text, its class
logits (the paper's step 1) and what each call cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ls_backend.llms.prompts import PromptTemplate

CostUnit = Literal["seconds", "per_call", "per_token"]
COST_UNITS: tuple[str, ...] = ("seconds", "per_call", "per_token")


class LLMError(RuntimeError):
    """An LLM call that failed or answered something unusable."""


@dataclass(frozen=True)
class ScoredBatch:
    """An LLM's answers, class logits and per-item costs for a batch of texts.

    Attributes:
        answers: (n,) int64, index into the prompt's classes of the LLM's answer.
        logits: (n, C) float64 class logits (the paper's step 1).
        costs: (n,) float64 cost of asking about each item, in the LLM's cost unit.
        meta: free-form facts about the call, e.g. ``{"seconds": 1.2, "input_tokens": [...]}``.
    """

    answers: np.ndarray
    logits: np.ndarray
    costs: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        answers = np.asarray(self.answers, dtype=np.int64)
        logits = np.asarray(self.logits, dtype=np.float64)
        costs = np.asarray(self.costs, dtype=np.float64)
        if logits.ndim != 2:
            raise ValueError(f"ScoredBatch: logits must have shape (n, C), got {logits.shape}")
        n, n_classes = logits.shape
        if answers.shape != (n,) or costs.shape != (n,):
            raise ValueError(
                f"ScoredBatch: answers {answers.shape} and costs {costs.shape} must have shape ({n},) "
                f"to match logits {logits.shape}"
            )
        if n and (answers.min() < 0 or answers.max() >= n_classes):
            raise ValueError(f"ScoredBatch: answers must be class indices in [0, {n_classes}), got {answers}")
        if np.isnan(logits).any():
            raise ValueError("ScoredBatch: logits contain NaN")
        if n and (not np.isfinite(costs).all() or costs.min() < 0):
            raise ValueError("ScoredBatch: costs must be finite and >= 0")
        # frozen dataclass: normalise dtypes in place of the caller's arrays
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "costs", costs)

    def __len__(self) -> int:
        return int(self.answers.shape[0])

    @classmethod
    def concatenate(cls, batches: Sequence[ScoredBatch]) -> ScoredBatch:
        """Join batches in order; ``meta`` values that are lists are joined, numbers summed, others kept first."""
        if not batches:
            raise ValueError("ScoredBatch.concatenate: no batches")
        meta: dict[str, Any] = {}
        for b in batches:
            for key, value in b.meta.items():
                if key not in meta:
                    meta[key] = list(value) if isinstance(value, list) else value
                elif isinstance(value, list) and isinstance(meta[key], list):
                    meta[key].extend(value)
                elif isinstance(value, int | float) and isinstance(meta[key], int | float):
                    meta[key] = meta[key] + value
        return cls(
            answers=np.concatenate([b.answers for b in batches]),
            logits=np.concatenate([b.logits for b in batches]),
            costs=np.concatenate([b.costs for b in batches]),
            meta=meta,
        )


@dataclass(frozen=True)
class CostModel:
    """How the cost of a call is counted, configurable per LLM.

    - ``"seconds"`` (default): the measured wall-clock seconds of the call.
    - ``"per_call"``: ``per_call`` per item, whatever its length.
    - ``"per_token"``: ``per_call + per_input_token * input_tokens + per_output_token * output_tokens``
      (e.g. the price list of a hosted API).
    """

    unit: CostUnit = "seconds"
    per_call: float = 0.0
    per_input_token: float = 0.0
    per_output_token: float = 0.0

    def __post_init__(self) -> None:
        if self.unit not in COST_UNITS:
            raise ValueError(f"CostModel: unknown unit {self.unit!r}; expected one of {list(COST_UNITS)}")
        for name in ("per_call", "per_input_token", "per_output_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"CostModel: {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"CostModel: {name} must be finite and >= 0, got {value!r}")

    def cost(self, seconds: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Cost of each item (n,) from its measured seconds and token counts."""
        seconds = np.asarray(seconds, dtype=np.float64)
        input_tokens = np.asarray(input_tokens, dtype=np.float64)
        output_tokens = np.asarray(output_tokens, dtype=np.float64)
        if not (seconds.shape == input_tokens.shape == output_tokens.shape) or seconds.ndim != 1:
            raise ValueError(
                f"CostModel.cost: seconds {seconds.shape}, input_tokens {input_tokens.shape} and "
                f"output_tokens {output_tokens.shape} must be 1-d arrays of one shape"
            )
        if self.unit == "seconds":
            return seconds.copy()
        if self.unit == "per_call":
            return np.full(seconds.shape, float(self.per_call))
        return self.per_call + self.per_input_token * input_tokens + self.per_output_token * output_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CostModel:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise TypeError(f"cost: expected a mapping like {{unit: seconds}}, got {d!r}")
        unknown = set(d) - {"unit", "per_call", "per_input_token", "per_output_token"}
        if unknown:
            raise ValueError(
                f"cost: unknown field(s) {sorted(unknown)}; expected unit, per_call, per_input_token, "
                "per_output_token"
            )
        return cls(**d)


@runtime_checkable
class LLM(Protocol):
    """An LLM that answers a classification prompt with class logits."""

    name: str  # unique id; used in scores tables and the score cache key
    revision: str  # model revision or weights hash; part of the score cache key
    cost_model: CostModel

    def score(self, texts: Sequence[str], prompt: PromptTemplate) -> ScoredBatch: ...
