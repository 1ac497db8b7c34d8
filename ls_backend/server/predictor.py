"""What the server asks of a model: the :class:`Predictor` protocol and the calibrated cascade behind it.

The server hands a predictor a :class:`ProjectSetup` (the project's classes, question and configuration) and the
texts of the tasks it could read; the predictor answers one :class:`Prediction` per text, in order.

:class:`CascadePredictor` runs the paper's method: the configured LLMs, cheapest first, each with a calibrator,
and a cascade policy (Algorithm 2, :meth:`ls_backend.ensemble.CascadePolicy.predict_staged`) that asks a costlier
LLM only about the items whose calibrated scores so far say it is worth it. Every LLM output goes through the
:class:`~ls_backend.llms.cache.ScoreCache` (SQLite under the model directory), so the same text is never sent to
the same LLM (and prompt) twice, and an LLM whose outputs are all cached is not even loaded.

Which calibrators and policy serve a project: the version ``model_source(project)`` returns, if any (the learning
loop plugs its promoted versions in here, at run time), else the out-of-task model of :mod:`ls_backend.server.oot`.

The score of an answer is the calibrated probability of the cascade's final class (as
:class:`ls_backend.loop.model.ServingModel` defines it): the deciding LLM's calibrated probability when the policy
answered with one LLM (``llm<j>``); for a vote (``majority``, ``weighted_majority``, ``most_confident``) the mean,
over the LLMs asked, of each one's calibrated probability of the final class (a linear opinion pool). Each term is
a probability, so the score is in [0, 1].
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ls_backend.calibration import corrected
from ls_backend.labelstudio import LabelSpec
from ls_backend.loop.model import ServingModel

# DEFAULT_LLMS lives with the configuration (a project picks LLMs from it by name); re-exported for old imports
from ls_backend.server.config import DEFAULT_LLMS as DEFAULT_LLMS
from ls_backend.server.config import BackendConfig
from ls_backend.server.corrections import CorrectionState, LLMPrompt, ProjectCorrections, tag_of
from ls_backend.server.oot import (
    Embed,
    OOTModel,
    OOTModelCache,
    OOTPlan,
    build_oot_model,
    fingerprint,
    load_oot_scores,
    plan_oot_model,
)

if TYPE_CHECKING:
    from ls_backend.embeddings import EmbeddingCache
    from ls_backend.llms.base import LLM
    from ls_backend.llms.cache import ScoreCache
    from ls_backend.llms.config import LLMConfig
    from ls_backend.llms.prompts import PromptTemplate

logger = logging.getLogger(__name__)

SCORE_CACHE_FILE = "scores.sqlite"
EMBEDDING_CACHE_FILE = "embeddings.sqlite"  # the student's input, cached like the LLMs' scores
OOT_FOLDER = "oot"


@dataclass(frozen=True)
class ProjectSetup:
    """One Label Studio project as the predictor sees it.

    Attributes:
        project_id: the id Label Studio sends, ``"<project id>.<created_at unix time>"``.
        label: the project's Choices/Text pair (classes, data key, result names).
        config: the backend configuration merged with the project's ``extra_params``.
        question: the question put to the LLMs.
        question_source: where the question came from: ``"config"``, ``"label_studio"`` or ``"default"``.
        label_config_xml: the labeling config as Label Studio sent it (None: not kept).
        extra_params: the project's ``extra_params`` (already merged into ``config``).
    """

    project_id: str
    label: LabelSpec
    config: BackendConfig
    question: str
    question_source: str = "default"
    label_config_xml: str | None = None
    extra_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ls_project(self) -> int | None:
        """Label Studio's numeric project id (None when the id does not start with one)."""
        head = self.project_id.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def description(self) -> str | None:
        """The text that describes the project (its description or configured question), if it has one."""
        return self.question if self.question_source != "default" else None


@dataclass(frozen=True)
class Prediction:
    """The predictor's answer for one text.

    Attributes:
        choice: the answered class (one of ``project.label.choices``), or None when the text got no answer.
        score: the confidence of ``choice`` in [0, 1], or None without a choice.
        model_version: the version string Label Studio stores with the prediction.
        llms_asked: the LLMs whose outputs decided this text, in the order asked.
        cost: what answering cost, summed over the LLMs asked (cached outputs count what their call cost).
        reason: why there is no answer (or a note about the answer), for the log.
        llm_costs: the cost per LLM asked, aligned with ``llms_asked`` (None: only the total is known).
        llm_called: per LLM asked, whether this request called it for this text (False: from the score cache, or
            a duplicate of a text sent in the same request); None: unknown (every one counts as a call).
        trace: per-LLM answers and scores and the policy's decision, for ``/explain`` (None: not recorded).
    """

    choice: str | None
    score: float | None
    model_version: str
    llms_asked: list[str] = field(default_factory=list)
    cost: float = 0.0
    reason: str | None = None
    llm_costs: tuple[float, ...] | None = None
    llm_called: tuple[bool, ...] | None = None
    trace: Mapping[str, Any] | None = None


@runtime_checkable
class Predictor(Protocol):
    """Answers a project's texts; one :class:`Prediction` per text, in order, never fewer."""

    def model_version(self, project: ProjectSetup) -> str:
        """The version string of the model that would answer this project now (cheap: no model loading)."""
        ...

    def predict(self, project: ProjectSetup, texts: list[str]) -> list[Prediction]: ...


class ServedVersion(Protocol):
    """A model version that can serve a project: its name and a :class:`~ls_backend.loop.model.ServingModel`
    (calibrators per LLM + cascade policy). The learning loop's ``ModelVersion`` is one."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> ServingModel: ...


ModelSource = Callable[[ProjectSetup], "ServedVersion | None"]
"""Returns the version that serves a project now, or None for the out-of-task default. Called at every /setup
and /predict, so it must be cheap (e.g. a dict lookup or a cached ``VersionStore.serving()``)."""


class PriorityLock:
    """A lock that interactive callers (``/predict``) get before background ones (pre-annotation jobs).

    A local model is not safe to run from several threads at once, so each LLM has one lock. A background holder
    takes it for one LLM batch at a time; while an interactive caller waits, no background caller gets it, so an
    interactive request waits for at most the one batch in progress (plain ``threading.Lock`` promises no order:
    a job releasing and taking it again in a loop could starve the request)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._held = False
        self._interactive_waiting = 0

    @contextlib.contextmanager
    def hold(self, background: bool = False) -> Iterator[None]:
        with self._condition:
            if background:
                while self._held or self._interactive_waiting:
                    self._condition.wait()
            else:
                self._interactive_waiting += 1
                try:
                    while self._held:
                        self._condition.wait()
                finally:
                    self._interactive_waiting -= 1
            self._held = True
        try:
            yield
        finally:
            with self._condition:
                self._held = False
                self._condition.notify_all()

    def locked(self) -> bool:
        with self._condition:
            return self._held


@dataclass
class _LLMSlot:
    """One configured LLM: its entry, a lazily computed cache identity and a lazily loaded model."""

    entry: dict[str, Any]
    config: LLMConfig
    revision: str | None = None
    llm: LLM | None = None
    build_lock: threading.Lock = field(default_factory=threading.Lock)
    score_lock: PriorityLock = field(default_factory=lambda: PriorityLock())

    @property
    def name(self) -> str:
        return self.config.name


class CascadePredictor:
    """The calibrated cascade of the configured LLMs (see the module docstring).

    Args:
        build_llm: makes an LLM from one config entry (default: :meth:`ls_backend.llms.config.LLMConfig.build`).
            LLMs are built on first need (a text not in the score cache), once per distinct entry.
        embed: embeds texts for SIM-OOT (default: :func:`ls_backend.embeddings.embed_texts`, all-MiniLM-L6-v2).
        model_source: the version serving a project, if any (see :data:`ModelSource`); None: out-of-task models.
    """

    def __init__(
        self,
        build_llm: Callable[[Mapping[str, Any]], LLM] | None = None,
        embed: Embed | None = None,
        model_source: ModelSource | None = None,
    ) -> None:
        self._build_llm = build_llm or _build_from_config
        self._embed = embed
        self.model_source = model_source
        self._slots: dict[str, _LLMSlot] = {}
        self._caches: dict[str, ScoreCache] = {}
        self._embedding_caches: dict[str, EmbeddingCache] = {}
        self._oot_models: dict[str, OOTModelCache] = {}
        self._corrections = ProjectCorrections()
        self._corrected_models: dict[tuple[str, str, tuple[int, ...]], OOTModel] = {}
        self._lock = threading.Lock()

    # ---- the configuration's LLMs

    def llm_entries(self, config: BackendConfig) -> list[dict[str, Any]]:
        entries = config.llm_catalog()
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise ValueError(f"llms[{i}] must be a mapping with 'name' and 'kind', got {entry!r}")
        return [dict(e) for e in entries]

    def slots(self, config: BackendConfig) -> list[_LLMSlot]:
        """The configuration's LLMs, cheapest first (validated; nothing loaded)."""
        from ls_backend.llms.config import parse_llm_configs

        entries = self.llm_entries(config)
        keys = [fingerprint(e, 16) for e in entries]
        with self._lock:
            missing = [i for i, k in enumerate(keys) if k not in self._slots]
        if missing:
            parsed = parse_llm_configs(
                entries
            )  # validates names, kinds and uniqueness; raises LLMConfigError
            with self._lock:
                for i in missing:
                    self._slots.setdefault(keys[i], _LLMSlot(entries[i], parsed[i]))
        with self._lock:
            slots = [self._slots[k] for k in keys]
        names = [s.name for s in slots]
        if len(set(names)) != len(names):
            raise ValueError(f"LLM names must be unique; got {names}")
        return slots

    def revision(self, slot: _LLMSlot) -> str:
        """The LLM's revision (the score cache key), found without loading weights where possible."""
        if slot.revision is None:
            slot.revision = _predicted_revision(slot.config)
            if (
                slot.revision is None
            ):  # remote adapters and hub ids: the adapter knows (cheap for remote ones)
                slot.revision = str(self.llm(slot).revision)
        return slot.revision

    def llm(self, slot: _LLMSlot) -> LLM:
        """The slot's LLM, built on first use (one build at a time per slot)."""
        with slot.build_lock:
            if slot.llm is None:
                logger.info("loading LLM %s", slot.name)
                llm = self._build_llm(slot.entry)
                if slot.revision is not None and str(llm.revision) != slot.revision:
                    logger.warning(
                        "LLM %s: revision %s differs from the predicted %s; caching under the former",
                        slot.name,
                        llm.revision,
                        slot.revision,
                    )
                slot.revision = str(llm.revision)
                slot.llm = llm
            return slot.llm

    def warm_up(self, config: BackendConfig) -> None:
        """Load every configured LLM, the out-of-task scores and (for SIM-OOT) the embedding model now."""
        for slot in self.slots(config):
            self.llm(slot)
        scores = load_oot_scores(config.resolved_oot_scores(), config.resolved_oot_tasks())
        if scores is not None and config.cascade_settings.similar_tasks:
            self.embedder(["warm up"])

    def embedder(self, texts: Sequence[str]) -> np.ndarray:
        if self._embed is not None:
            return self._embed(texts)
        from ls_backend.embeddings import embed_texts

        return embed_texts(texts)

    # ---- prompts and the score cache

    def prompt(self, project: ProjectSetup, slot: _LLMSlot) -> PromptTemplate:
        """The project's prompt for one LLM: the config's prompt settings, then the LLM's own overrides."""
        from ls_backend.llms.prompts import PromptTemplate

        settings: dict[str, Any] = {"max_text_chars": project.config.max_text_chars}
        settings |= dict(project.config.prompt)
        settings |= slot.config.prompt  # the LLM's own style (e.g. chat for an instruct model) wins
        settings |= {"question": project.question, "classes": list(project.label.class_words)}
        return PromptTemplate.from_dict(settings)

    def score_cache(self, config: BackendConfig) -> ScoreCache:
        from ls_backend.llms.cache import ScoreCache

        return self._open_once(self._caches, config.resolved_model_dir() / SCORE_CACHE_FILE, ScoreCache)

    def embedding_cache(self, config: BackendConfig) -> EmbeddingCache:
        from ls_backend.embeddings import EmbeddingCache

        return self._open_once(
            self._embedding_caches, config.resolved_model_dir() / EMBEDDING_CACHE_FILE, EmbeddingCache
        )

    def _open_once(self, opened: dict[str, Any], path: Path, open_: Callable[[Path], Any]) -> Any:
        """The one open cache of a model dir's file (opened on first need; shared by every request after)."""
        with self._lock:
            if str(path) not in opened:
                opened[str(path)] = open_(path)
            return opened[str(path)]

    def student_inputs(
        self, config: BackendConfig, texts: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The student's input: embeddings (n, d) of ``texts`` through the embedding cache, the seconds per text
        and whether each was embedded now (the server's embedding model: :func:`ls_backend.embeddings.
        resolve_embedding_model`, the same as SIM-OOT's)."""
        from ls_backend.embeddings import cached_embeddings, resolve_embedding_model

        model = Path(resolve_embedding_model()).name if self._embed is None else "injected"
        return cached_embeddings(texts, self.embedding_cache(config), model, self.embedder)

    def embed_for_retrain(self, config: BackendConfig, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The trainer's ``embed_fn`` (:data:`ls_backend.loop.trainer.EmbedTexts`)."""
        vectors, seconds, _ = self.student_inputs(config, texts)
        return vectors, seconds

    def score_texts(
        self,
        slot: _LLMSlot,
        prompt: PromptTemplate,
        texts: Sequence[str],
        cache: ScoreCache,
        batch_size: int,
        background: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Answers (n,), class logits (n, C), costs (n,) and whether each text was sent to the LLM now (n,).

        The LLM's lock is taken for one batch of ``batch_size`` texts at a time; ``background`` callers (jobs) give
        way to interactive ones between batches (:class:`PriorityLock`)."""
        from ls_backend.llms.cache import text_hash
        from ls_backend.llms.scoring import score_items

        n, n_classes = len(texts), len(prompt.classes)
        prompt_hash = prompt.hash()
        revision = self.revision(slot)
        answers = np.zeros(n, dtype=np.int64)
        logits = np.zeros((n, n_classes))
        costs = np.zeros(n)
        called = np.zeros(n, dtype=bool)
        missing: list[int] = []
        for i, hit in enumerate(cache.get_many(slot.name, revision, prompt_hash, texts)):
            if hit is None or hit.logits.shape != (n_classes,):
                missing.append(i)
            else:
                answers[i], logits[i], costs[i] = hit.answer, hit.logits, hit.cost
        if missing:
            llm = self.llm(slot)
            if str(llm.revision) != revision:  # the build corrected the predicted revision
                revision = str(llm.revision)
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                # a local model is not safe to run from several request threads at once
                with slot.score_lock.hold(background=background):
                    batch = score_items(
                        llm, prompt, [texts[i] for i in chunk], cache=cache, batch_size=batch_size
                    )
                answers[chunk], logits[chunk], costs[chunk] = batch.answers, batch.logits, batch.costs
            first: dict[str, int] = {}
            for i in missing:
                first.setdefault(text_hash(texts[i]), i)
            called[list(first.values())] = True
        return answers, logits, costs, called

    # ---- which model serves a project

    def oot_plan(self, project: ProjectSetup) -> OOTPlan:
        """The project's out-of-task model plan (cheap; see :func:`ls_backend.server.oot.plan_oot_model`)."""
        config = project.config
        slots = self.slots(config)
        scores = load_oot_scores(config.resolved_oot_scores(), config.resolved_oot_tasks())
        extra = {
            "entries": [s.entry for s in slots],
            "prompt": dict(config.prompt),
            "choices": list(project.label.choices),
        }
        return plan_oot_model(
            scores,
            [(s.name, self.revision(s)) for s in slots],
            project.label.class_words,
            project.description,
            config.cascade_settings,
            extra_key=extra,
        )

    def plugged_version(self, project: ProjectSetup) -> ServedVersion | None:
        """The version ``model_source`` serves for this project, when it fits the configured LLMs and classes."""
        if self.model_source is None:
            return None
        version = self.model_source(project)
        if version is None:
            return None
        names = tuple(s.name for s in self.slots(project.config))
        model = version.model
        if tuple(model.llm_names) != names or tuple(model.classes) != tuple(project.label.class_words):
            logger.warning(
                "project %s: version %s is for LLMs %s and classes %s, not %s and %s; serving the out-of-task model",
                project.project_id,
                version.name,
                list(model.llms),
                list(model.classes),
                list(names),
                list(project.label.class_words),
            )
            return None
        return version

    def model_version(self, project: ProjectSetup) -> str:
        plugged = self.plugged_version(project)
        if plugged is not None:
            return plugged.name
        return _with_tag(self.oot_plan(project).version, self.correction_tag(project))

    def served(self, project: ProjectSetup) -> ServedVersion:
        """The version that answers this project now (building its out-of-task model if needed)."""
        plugged = self.plugged_version(project)
        if plugged is not None:
            return plugged
        return self.oot_model(project)

    # ---- label-free corrections (see ls_backend.server.corrections)

    def _correction_keys(self, project: ProjectSetup) -> list[LLMPrompt]:
        return [
            LLMPrompt(slot.name, self.revision(slot), self.prompt(project, slot).hash())
            for slot in self.slots(project.config)
        ]

    def correction_tag(self, project: ProjectSetup) -> str:
        """Which corrections serve the project now, as its version tag (cheap: counts in the score cache)."""
        settings = project.config.cascade_settings
        kinds = self._corrections.kinds(
            settings.correction, self._correction_keys(project), self.score_cache(project.config),
            settings.bc_min_items,
        )  # fmt: skip
        return tag_of(kinds)

    def corrections(self, project: ProjectSetup) -> CorrectionState:
        """Each LLM's label-free correction for the project now (CC scores the content-free inputs once)."""
        from ls_backend.calibration import CONTENT_FREE_TEXTS

        settings = project.config.cascade_settings
        slots = self.slots(project.config)
        cache = self.score_cache(project.config)

        def score_content_free(k: int) -> np.ndarray:
            prompt = self.prompt(project, slots[k])
            _, logits, _, _ = self.score_texts(
                slots[k], prompt, list(CONTENT_FREE_TEXTS), cache, settings.batch_size
            )
            return logits

        return self._corrections.state(
            settings.correction,
            self._correction_keys(project),
            cache,
            settings.bc_min_items,
            score_content_free,
        )

    def oot_model(self, project: ProjectSetup) -> OOTModel:
        """The project's out-of-task model with its label-free corrections in front of the calibrators: what
        serves before any in-task label, and what the learning loop saves as the project's ``initial`` version.
        The uncorrected model is built on first need, then read from memory or its JSON file."""
        base = self.oot_base(project)
        state = self.corrections(project)
        if not state.tag:
            return base
        key = (base.version, state.tag, tuple(id(c) for c in state.corrections))
        with self._lock:
            if key in self._corrected_models:
                return self._corrected_models[key]
        model = base.model
        calibrators = [corrected(c, cal) for c, cal in zip(state.corrections, model.calibrators, strict=True)]
        served = OOTModel(
            _with_tag(base.version, state.tag),
            base.kind,
            ServingModel(model.llms, model.classes, calibrators, model.policy, model.answer),
            base.sources,
            [*base.notes, f"label-free corrections per LLM: {state.tag}"],
        )
        with self._lock:
            self._corrected_models[key] = served
        return served

    def oot_base(self, project: ProjectSetup) -> OOTModel:
        """The project's out-of-task model without the project's own corrections (built on first need, then
        from memory or its JSON file)."""
        plan = self.oot_plan(project)
        cache = self._oot_cache(project.config)
        config = project.config

        def build() -> OOTModel:
            scores = load_oot_scores(config.resolved_oot_scores(), config.resolved_oot_tasks())
            model = build_oot_model(plan, scores, self.embedder)
            logger.info("out-of-task model %s: %s", model.version, "; ".join(model.notes))
            return model

        return cache.get(plan, build)

    def prepare(self, project: ProjectSetup) -> None:
        """Build the project's out-of-task model in the background (called at /setup; never blocks)."""
        try:
            if self.plugged_version(project) is not None:
                return
            plan = self.oot_plan(project)
            if self._oot_cache(project.config).cached(plan.version) is not None:
                return
        except Exception:
            logger.exception("project %s: could not plan its model", project.project_id)
            return

        def run() -> None:
            try:
                self.oot_base(project)
            except Exception:
                logger.exception("project %s: building the out-of-task model failed", project.project_id)

        threading.Thread(target=run, name=f"lwc-oot-{project.project_id}", daemon=True).start()

    def _oot_cache(self, config: BackendConfig) -> OOTModelCache:
        folder = config.resolved_model_dir() / OOT_FOLDER
        with self._lock:
            if str(folder) not in self._oot_models:
                self._oot_models[str(folder)] = OOTModelCache(folder)
            return self._oot_models[str(folder)]

    # ---- prediction

    def predict(self, project: ProjectSetup, texts: list[str], background: bool = False) -> list[Prediction]:
        """The cascade (Algorithm 2) over the batch: LLM k scores only the texts that reach level k.
        ``background``: a job's batch, which gives way to interactive requests at each LLM batch."""
        if not texts:
            return []
        version = self.served(project)
        model = version.model
        slots = self.slots(project.config)
        prompts = [self.prompt(project, slot) for slot in slots]
        cache = self.score_cache(project.config)
        batch_size = project.config.cascade_settings.batch_size
        # member 0 may be the student (a classifier on the project's labels); the LLMs follow it
        first_llm = 1 if model.student is not None else 0
        n, n_members = len(texts), first_llm + len(slots)
        called = np.zeros((n_members, n), dtype=bool)
        spent = np.zeros((n_members, n))

        def score_member(k: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            chosen = [texts[i] for i in items]
            if k < first_llm:
                assert model.student is not None
                vectors, costs, fresh = self.student_inputs(project.config, chosen)
                logits = model.student.logits(vectors)
                answers = logits.argmax(axis=1)
            else:
                slot = k - first_llm
                answers, logits, costs, fresh = self.score_texts(
                    slots[slot], prompts[slot], chosen, cache, batch_size, background
                )
            called[k, items], spent[k, items] = fresh, costs
            return answers, logits, costs

        served = model.predict_staged(score_member, n)
        cascade = served.cascade
        names = list(model.llms[:first_llm]) + [s.name for s in slots]
        choices = project.label.choices
        strategies = model.policy.strategies
        decided = cascade.actions[served.depth - 1, np.arange(n)]
        predictions = []
        for i in range(n):
            depth = int(served.depth[i])
            asked = names[:depth]
            trace = {
                "answers": [choices[int(a)] for a in cascade.answers[:depth, i]],
                "scores": [float(s) for s in cascade.scores[:depth, i]],
                "decision": strategies[int(decided[i])],
            }
            predictions.append(
                Prediction(
                    choice=choices[int(served.predictions[i])],
                    score=float(served.scores[i]),
                    model_version=version.name,
                    llms_asked=asked,
                    cost=float(spent[:depth, i].sum()),
                    llm_costs=tuple(float(c) for c in spent[:depth, i]),
                    llm_called=tuple(bool(c) for c in called[:depth, i]),
                    trace=trace,
                )
            )
        return predictions


def label_studio_entry(label: LabelSpec, prediction: Prediction) -> tuple[dict[str, Any] | None, str | None]:
    """The prediction as Label Studio stores it (``result``, ``score``, ``model_version``), or None and why not: a
    prediction Label Studio would reject (a choice outside the config, a score outside [0, 1]) is never sent,
    since Label Studio validates a whole batch and drops it for one invalid prediction."""
    problem = prediction.reason
    if prediction.choice is not None:
        score = prediction.score
        if prediction.choice not in label.choices:
            problem = f"predictor answered {prediction.choice!r}, not one of {list(label.choices)}"
        elif score is None or not math.isfinite(score) or not 0.0 <= score <= 1.0:
            problem = f"predictor gave score {score!r}, not a number in [0, 1]"
        else:
            entry = {"result": label.result(prediction.choice), "score": score}
            return {**entry, "model_version": prediction.model_version}, None
    return None, problem or "no answer"


def _with_tag(version: str, tag: str) -> str:
    return f"{version}+{tag}" if tag else version


def _predicted_revision(config: LLMConfig) -> str | None:
    """The revision an LLM will report, computed without loading it (None when only the adapter can tell)."""
    base = _predicted_base_revision(config)
    if base is None or config.kind not in ("packaged", "hf"):
        return base
    from ls_backend.llms.config import predicted_precision
    from ls_backend.llms.hf import hf_revision

    # the HF adapter's revision names its class-token rule and its precision too
    return hf_revision(base, predicted_precision(config.kind, config.options) or "float32")


def _predicted_base_revision(config: LLMConfig) -> str | None:
    options = config.options
    if config.kind == "packaged" and isinstance(options.get("model"), str):
        from ls_backend.llms.packaged import packaged_model

        return packaged_model(options["model"]).sha256
    if config.kind == "hf" and isinstance(options.get("model"), str):
        if options.get("revision"):
            return str(options["revision"])
        from pathlib import Path

        if Path(options["model"]).is_dir() or str(options["model"]).endswith(".gguf"):
            from ls_backend.llms.hf import local_revision

            model, gguf = str(options["model"]), options.get("gguf_file")
            if gguf is None and model.endswith(".gguf"):
                model, gguf = str(Path(model).parent), Path(model).name
            return local_revision(model, gguf)
        # a hub id: the commit is known only once loaded (then the slot takes the adapter's revision)
        return f"hub:{options['model']}"
    return None


def _build_from_config(entry: Mapping[str, Any]) -> LLM:
    from ls_backend.llms.config import parse_llm_configs

    (parsed,) = parse_llm_configs([dict(entry)])
    return parsed.build()


def describe_predictions(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """A short summary for the log: answered, mean score, cost, how deep the cascade went, calls per LLM."""
    answered = [p for p in predictions if p.choice is not None]
    mean = sum(p.score or 0.0 for p in answered) / len(answered) if answered else None
    depth: dict[int, int] = {}
    calls: dict[str, int] = {}
    for p in answered:
        depth[len(p.llms_asked)] = depth.get(len(p.llms_asked), 0) + 1
        called = p.llm_called if p.llm_called and len(p.llm_called) == len(p.llms_asked) else None
        for name, fresh in zip(p.llms_asked, called or (True,) * len(p.llms_asked), strict=True):
            calls[name] = calls.get(name, 0) + int(fresh)
    return {
        "answered": len(answered),
        "skipped": len(predictions) - len(answered),
        "mean_score": mean,
        "cost": sum(p.cost for p in predictions),
        "depth": dict(sorted(depth.items())),
        "llm_calls": calls,
    }
