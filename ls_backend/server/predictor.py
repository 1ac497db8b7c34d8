"""What the server asks of a model: the :class:`Predictor` protocol and its phase-1 implementation.

The server hands a predictor a :class:`ProjectSetup` (the project's classes, question and configuration) and
the texts of the tasks it could read; the predictor answers one :class:`Prediction` per text, in order. The
cascade of calibrated LLMs plugs in here later; :class:`SingleLLMPredictor` asks one LLM (the cheapest one
configured, by default the packaged SmolLM2) and scores its answer by the softmax of its class logits
(the paper's steps 1-4, :func:`ls_backend.confidence.confidence_scores`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ls_backend.server.config import BackendConfig
from ls_backend.server.labeling import LabelSpec

if TYPE_CHECKING:
    from ls_backend.llms.base import LLM
    from ls_backend.llms.prompts import PromptTemplate

logger = logging.getLogger(__name__)

DEFAULT_LLM: dict[str, Any] = {
    "name": "smollm2-135m-instruct",
    "kind": "packaged",
    "model": "smollm2-135m-instruct",
}
# Phase 1 has no labels to calibrate on: the LLM's plain softmax is the default (out-of-task) calibration.
DEFAULT_CALIBRATION = "default-calibration"


@dataclass(frozen=True)
class ProjectSetup:
    """One Label Studio project as the predictor sees it.

    Attributes:
        project_id: the id Label Studio sends, ``"<project id>.<created_at unix time>"``.
        label: the project's Choices/Text pair (classes, data key, result names).
        config: the backend configuration merged with the project's ``extra_params``.
        question: the question put to the LLMs.
        question_source: where the question came from: ``"config"``, ``"label_studio"`` or ``"default"``.
    """

    project_id: str
    label: LabelSpec
    config: BackendConfig
    question: str
    question_source: str = "default"

    @property
    def ls_project(self) -> int | None:
        """Label Studio's numeric project id (None when the id does not start with one)."""
        head = self.project_id.split(".", 1)[0]
        return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class Prediction:
    """The predictor's answer for one text.

    Attributes:
        choice: the answered class (one of ``project.label.choices``), or None when the text got no answer.
        score: the confidence of ``choice`` in [0, 1], or None without a choice.
        model_version: the version string Label Studio stores with the prediction.
        llms_asked: the LLMs that scored this text, in the order asked.
        cost: what answering cost, summed over the LLMs asked.
        reason: why there is no answer (or a note about the answer), for the log.
        llm_costs: the cost per LLM asked, aligned with ``llms_asked`` (None: only the total is known).
    """

    choice: str | None
    score: float | None
    model_version: str
    llms_asked: list[str] = field(default_factory=list)
    cost: float = 0.0
    reason: str | None = None
    llm_costs: tuple[float, ...] | None = None


@runtime_checkable
class Predictor(Protocol):
    """Answers a project's texts; one :class:`Prediction` per text, in order, never fewer."""

    def model_version(self, project: ProjectSetup) -> str:
        """The version string of the model that would answer this project now (cheap: no model loading)."""
        ...

    def predict(self, project: ProjectSetup, texts: list[str]) -> list[Prediction]: ...


def _fingerprint(data: Any) -> str:
    payload = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:8]


class SingleLLMPredictor:
    """Phase 1: one LLM (the first of ``config.llms``, else the packaged SmolLM2), uncalibrated softmax score.

    Args:
        build_llm: makes an LLM from one config entry (default: :meth:`ls_backend.llms.config.LLMConfig.build`).
            LLMs are built on first use, once per distinct entry, and shared by the projects that use it.
        default_llm: the entry used when the configuration lists no LLM.
    """

    def __init__(
        self,
        build_llm: Callable[[Mapping[str, Any]], LLM] | None = None,
        default_llm: Mapping[str, Any] | None = None,
    ) -> None:
        self._build_llm = build_llm or _build_from_config
        self.default_llm = dict(default_llm or DEFAULT_LLM)
        self._llms: dict[str, LLM] = {}
        self._build_lock = threading.Lock()
        # a local model is not safe to run from several request threads at once (and the CPU is shared anyway)
        self._score_lock = threading.Lock()

    def llm_entry(self, config: BackendConfig) -> dict[str, Any]:
        entry = config.llms[0] if config.llms else self.default_llm
        if not isinstance(entry, Mapping):
            raise ValueError(f"llms[0] must be a mapping with 'name' and 'kind', got {entry!r}")
        return dict(entry)

    def model_version(self, project: ProjectSetup) -> str:
        entry = self.llm_entry(project.config)
        # the question is left out: it may arrive from Label Studio after /setup answered
        settings = {"llm": entry, "prompt": dict(project.config.prompt), "classes": project.label.class_words}
        return f"lwc-{entry.get('name', 'llm')}-{DEFAULT_CALIBRATION}-{_fingerprint(settings)}"

    def llm(self, config: BackendConfig) -> LLM:
        """The (built once) LLM of a configuration."""
        entry = self.llm_entry(config)
        key = _fingerprint(entry)
        with self._build_lock:
            if key not in self._llms:
                logger.info("loading LLM %s", entry.get("name"))
                self._llms[key] = self._build_llm(entry)
            return self._llms[key]

    def warm_up(self, config: BackendConfig) -> None:
        """Load the configuration's LLM now rather than at the first /predict."""
        self.llm(config)

    def prompt(self, project: ProjectSetup) -> PromptTemplate:
        from ls_backend.llms.config import parse_llm_configs
        from ls_backend.llms.prompts import PromptTemplate

        (entry,) = parse_llm_configs([self.llm_entry(project.config)])
        settings: dict[str, Any] = {"max_text_chars": project.config.max_text_chars}
        settings |= dict(project.config.prompt)
        settings |= entry.prompt  # the LLM's own overrides (e.g. chat for an instruct model) win
        settings |= {"question": project.question, "classes": list(project.label.class_words)}
        return PromptTemplate.from_dict(settings)

    def predict(self, project: ProjectSetup, texts: list[str]) -> list[Prediction]:
        """Ask the LLM; the score of its answer is the softmax of its class logits (paper, steps 1-4)."""
        from ls_backend.confidence import confidence_scores

        version = self.model_version(project)
        if not texts:
            return []
        prompt = self.prompt(project)
        llm = self.llm(project.config)
        with self._score_lock:
            batch = llm.score(list(texts), prompt)
        if len(batch) != len(texts):
            raise RuntimeError(f"LLM {llm.name} answered {len(batch)} of {len(texts)} texts")
        scores = confidence_scores(batch.logits, answers=batch.answers)
        return [
            Prediction(
                choice=project.label.choices[int(answer)],
                score=float(score),
                model_version=version,
                llms_asked=[llm.name],
                cost=float(cost),
                llm_costs=(float(cost),),
            )
            for answer, score, cost in zip(batch.answers, scores, batch.costs, strict=True)
        ]


def _build_from_config(entry: Mapping[str, Any]) -> LLM:
    from ls_backend.llms.config import parse_llm_configs

    (parsed,) = parse_llm_configs([dict(entry)])
    return parsed.build()


def describe_predictions(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """A short summary for the log: how many answered, the mean score and the total cost."""
    answered = [p for p in predictions if p.choice is not None]
    mean = sum(p.score or 0.0 for p in answered) / len(answered) if answered else None
    return {
        "answered": len(answered),
        "skipped": len(predictions) - len(answered),
        "mean_score": mean,
        "cost": sum(p.cost for p in predictions),
    }
