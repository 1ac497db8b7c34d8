"""The model a project gets before any of its own labels exist: out-of-task calibrators and a default policy.

Calibrators come from OTHER tasks' labeled scores (by default the public benchmark's table, which ships with the
package: ``ls_backend/data/benchmark/scores.jsonl.gz``; config key ``oot_scores``), as the paper's out-of-task
calibration:

- **eligible tasks** for an LLM: tasks of the table with the project's class words (same set, any order: their
  columns are permuted into the project's order), scored by an LLM of the same name, with labeled items;
- **SIM-OOT** (the project has a description or configured question, ``cascade.similar_tasks``): the project's
  question and every table task's question + description are embedded (:mod:`ls_backend.embeddings`), clustered
  (:func:`ls_backend.sampling.cluster_tasks`, ``round(sqrt(tasks))`` clusters) and the eligible tasks of the
  project's cluster are the sources (:func:`ls_backend.sampling.oot_source_tasks`: the nearest task's cluster
  when the project's has none); **ALL-OOT** otherwise: every eligible task;
- per LLM, a calibrator (``cascade.calibrator``, ST by default) fitted on the pooled labeled items of its
  sources; an LLM without eligible tasks keeps the identity (its plain softmax), and the log says so;
- the **default policy**: the paper's Algorithm 1 (:func:`ls_backend.ensemble.train_policy`, ``lam`` =
  ``cascade.lam``, 0 by default) on the pooled items of the sources that every LLM scored, with the OOT-calibrated
  scores and equal-frequency bin edges (``cascade.n_bins`` = 5 quantile bins per LLM; 5 rather than the paper's
  10 because the pooled items are few thousand and a 3-LLM table has 125 keys at the deepest level);
- without such items (no table, no matching LLM names, no task with the project's classes) the policy is the
  **default rule**: LLM k answers when its (calibrated) score is >= ``cascade.threshold`` (0.8), else the next
  LLM is asked; the deepest LLM level answers by weighted majority vote of all LLMs (its own answer when there is
  one LLM). It is a :class:`~ls_backend.ensemble.CascadePolicy` table, so the same inference code runs.

The model version says which: ``oot-sim-<hash8>``, ``oot-all-<hash8>`` or ``default-rule-<hash8>``, where the hash
covers the LLMs (names and revisions), the classes, the prompt settings, the table's sha256, the cascade settings
and, for SIM-OOT, the project's question. :func:`plan_oot_model` finds the version cheaply (no fitting, no
embedding); :func:`build_oot_model` fits; :class:`OOTModelCache` keeps built models as JSON under the model
directory so that a restart does not fit again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.calibration import Calibrator, make_calibrator
from ls_backend.ensemble import CascadePolicy
from ls_backend.files import atomic_write_text, file_sha256
from ls_backend.loop.fitting import (
    LabeledPart,
    fit_correction,
    fit_oot_calibrator,
    train_oot_policy,
)
from ls_backend.loop.model import ServingModel, check_answer_rules, threshold_policy
from ls_backend.scores import ScoresTable
from ls_backend.server.config import CascadeSettings

logger = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]
"""Embeds texts into vectors (n, dim); default :func:`ls_backend.embeddings.embed_texts`."""

KINDS = ("oot-sim", "oot-all", "default-rule")
CONTENT_FREE_FILE = "content_free.jsonl.gz"
FORMAT = "lwc-oot-model"
PROJECT = "<project>"


def fingerprint(data: Any, length: int = 8) -> str:
    """The first ``length`` hex digits of the sha256 of ``data`` as canonical JSON."""
    payload = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


# ---------------------------------------------------------------------------------------------------------------
# the table of other tasks' scores


@dataclass
class _PooledTask:
    """One table task's labeled items, classes permuted into the project's order."""

    logits: np.ndarray  # (L_t, n, C)
    answers: np.ndarray  # (L_t, n)
    labels: np.ndarray  # (n,)
    costs: np.ndarray  # (L_t, n)
    llms: tuple[str, ...]


class OOTScores:
    """Other tasks' labeled scores (a scores table, see :mod:`ls_backend.scores`) and their descriptions.

    Args:
        path: the scores table (``.jsonl`` or ``.jsonl.gz``).
        tasks_path: its tasks file (questions and descriptions; None: the public benchmark's task list, else the
            descriptions the table carries, else the task names).
    """

    def __init__(self, path: Path, tasks_path: Path | None = None) -> None:
        from ls_backend.scores import read_scores

        self.path = Path(path)
        self.sha256 = file_sha256(self.path)
        self.table = read_scores(self.path)
        if len(self.table) == 0:
            raise ValueError(f"out-of-task scores {self.path}: the table has no task")
        self.texts = self._task_texts(tasks_path)
        cf_path = content_free_path(self.path)
        self.content_free = read_scores(cf_path) if cf_path.exists() else None
        self.content_free_sha256 = file_sha256(cf_path) if cf_path.exists() else None

    @classmethod
    def in_memory(
        cls, table: ScoresTable, texts: Mapping[str, str], content_free: ScoresTable | None = None
    ) -> OOTScores:
        """Other tasks' scores held in memory (the benchmark's leave-one-task-out tables); ``texts`` are each
        task's question and description, as :meth:`__init__` reads them from a tasks file."""
        scores = cls.__new__(cls)
        scores.path = Path("<memory>")
        scores.table = table
        scores.sha256 = fingerprint(sorted(table.tasks), 16)
        scores.texts = {t.name: texts.get(t.name, t.name.replace("_", " ")) for t in table}
        scores.content_free = content_free
        scores.content_free_sha256 = None
        return scores

    def _task_texts(self, tasks_path: Path | None) -> dict[str, str]:
        from ls_backend.datasets import BENCHMARK_TASKS

        specs: dict[str, tuple[str, str]] = {
            t.spec.name: (t.spec.question, t.spec.description) for t in BENCHMARK_TASKS
        }
        if tasks_path is not None:
            from ls_backend.tasks import load_tasks

            specs.update({name: (t.question, t.description) for name, t in load_tasks(tasks_path).items()})
        texts = {}
        for task in self.table:
            question, description = specs.get(task.name, ("", task.description))
            text = " ".join(part.strip() for part in (question, description) if part and part.strip())
            texts[task.name] = text or task.name.replace("_", " ")
        return texts

    @property
    def task_names(self) -> list[str]:
        return list(self.table.tasks)

    def eligible_tasks(self, llm: str, class_words: Sequence[str]) -> list[str]:
        """Tasks with the project's class words (any order), scored by ``llm``, with at least one labeled item."""
        wanted = _class_key(class_words)
        return [
            t.name
            for t in self.table
            if _class_key(t.classes) == wanted and llm in t.llms and bool(t.labeled.any())
        ]

    def pooled(
        self, tasks: Sequence[str], llms: Sequence[str], class_words: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The labeled items of ``tasks`` for ``llms``: logits (L, n, C), answers (L, n), labels (n,), costs (L, n),
        classes in the order of ``class_words``."""
        parts = [self._task(name, class_words) for name in tasks]
        if not parts:
            raise ValueError("no out-of-task source task to pool")
        rows = [[p.llms.index(llm) for llm in llms] for p in parts]
        return (
            np.concatenate([p.logits[r] for p, r in zip(parts, rows, strict=True)], axis=1),
            np.concatenate([p.answers[r] for p, r in zip(parts, rows, strict=True)], axis=1),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.costs[r] for p, r in zip(parts, rows, strict=True)], axis=1),
        )

    def part(
        self, name: str, llms: Sequence[str], class_words: Sequence[str], correction: str
    ) -> LabeledPart:
        """One task's labeled items for ``llms`` (classes in the order of ``class_words``), each LLM's logits read
        through that task's own label-free ``correction``: BC fitted on all of its items, CC on its content-free
        inputs (none where the table has none)."""
        task = self.table[name]
        to_project = self._column_map(task.classes, class_words)
        pooled = self._task(name, class_words)
        rows = [pooled.llms.index(llm) for llm in llms]
        corrections = []
        for llm in llms:
            every = np.empty_like(task.logits[task.llm_index(llm)])
            every[:, to_project] = task.logits[task.llm_index(llm)]
            corrections.append(
                fit_correction(correction, every, self.content_free_logits(name, llm, class_words))
            )
        return LabeledPart(
            pooled.logits[rows], pooled.answers[rows], pooled.labels, pooled.costs[rows], tuple(corrections)
        )

    def content_free_logits(self, name: str, llm: str, class_words: Sequence[str]) -> np.ndarray | None:
        """The class logits (m, C) of a task's content-free inputs under ``llm``'s prompt, columns in the order of
        ``class_words`` (None: not in the table)."""
        if self.content_free is None or name not in self.content_free.tasks:
            return None
        task = self.content_free[name]
        if llm not in task.llms:
            return None
        logits = np.empty_like(task.logits[task.llm_index(llm)])
        logits[:, self._column_map(task.classes, class_words)] = task.logits[task.llm_index(llm)]
        return logits

    @staticmethod
    def _column_map(classes: Sequence[str], class_words: Sequence[str]) -> np.ndarray:
        position = {c: i for i, c in enumerate(_class_key_list(class_words))}
        return np.array([position[c] for c in _class_key_list(classes)], dtype=np.int64)

    def _task(self, name: str, class_words: Sequence[str]) -> _PooledTask:
        task = self.table[name]
        # column j of the table's task is class to_project[j] of the project
        to_project = self._column_map(task.classes, class_words)
        labeled = task.labeled
        logits = np.empty_like(task.logits[:, labeled])
        logits[..., to_project] = task.logits[:, labeled]
        return _PooledTask(
            logits=logits,
            answers=to_project[task.answers[:, labeled]],
            labels=to_project[task.labels[labeled]],
            costs=task.costs[:, labeled],
            llms=task.llms,
        )


def content_free_path(scores_path: Path) -> Path:
    """Where a scores table's content-free scores live: ``content_free.jsonl.gz`` beside it."""
    return Path(scores_path).parent / CONTENT_FREE_FILE


def _class_key_list(classes: Sequence[str]) -> list[str]:
    return [str(c).strip().lower() for c in classes]


def _class_key(classes: Sequence[str]) -> frozenset[str]:
    return frozenset(_class_key_list(classes))


_SCORES: dict[tuple[str, int, int, str | None], OOTScores] = {}
_SCORES_LOCK = threading.Lock()
_MISSING: set[str] = set()  # paths already reported missing (reported once)
_BROKEN: set[tuple[str, int, int, str | None]] = set()  # file versions that failed to load (not read again)


def load_oot_scores(path: Path, tasks_path: Path | None = None) -> OOTScores | None:
    """The table at ``path``, read once per process and file version; None (logged) when it is missing or bad."""
    try:
        stat = path.stat()
    except OSError:
        with _SCORES_LOCK:
            first = str(path) not in _MISSING
            _MISSING.add(str(path))
        if first:
            logger.warning(
                "no out-of-task scores at %s: projects start with identity calibrators and the default rule",
                path,
            )
        return None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(tasks_path) if tasks_path else None)
    with _SCORES_LOCK:
        if key not in _SCORES:
            if key in _BROKEN:
                return None
            try:
                _SCORES[key] = OOTScores(path, tasks_path)
            except (OSError, ValueError) as e:
                logger.error("cannot use the out-of-task scores %s (%s): using the default rule", path, e)
                _BROKEN.add(key)
                return None
            table = _SCORES[key].table
            logger.info(
                "out-of-task scores %s: %d tasks, LLMs %s",
                path,
                len(table),
                sorted({m for t in table for m in t.llms}),
            )
        return _SCORES[key]


# ---------------------------------------------------------------------------------------------------------------
# planning (cheap) and building (fits)


@dataclass(frozen=True)
class OOTPlan:
    """What the out-of-task model of a project will be, found without fitting anything.

    Attributes:
        kind: ``oot-sim``, ``oot-all`` or ``default-rule``.
        version: the model version string, ``<kind>-<hash8>``.
        llms: LLM names, cheapest first.
        classes: the project's class words (the LLMs' classes, in the config's order).
        eligible: per LLM, the table tasks it could be calibrated on.
        common: the eligible tasks every LLM scored (what the default policy trains on).
        question: the text that finds similar tasks (None for ALL-OOT and the default rule).
        settings: the cascade settings.
    """

    kind: str
    version: str
    llms: tuple[str, ...]
    classes: tuple[str, ...]
    eligible: tuple[tuple[str, ...], ...]
    common: tuple[str, ...]
    question: str | None
    settings: CascadeSettings


def plan_oot_model(
    scores: OOTScores | None,
    llms: Sequence[tuple[str, str]],
    class_words: Sequence[str],
    question: str | None,
    settings: CascadeSettings,
    extra_key: Mapping[str, Any] | None = None,
) -> OOTPlan:
    """The plan of a project's out-of-task model.

    Args:
        scores: other tasks' scores (None: there are none).
        llms: (name, revision) of each LLM, cheapest first.
        class_words: the project's classes as put to the LLMs.
        question: the project's description or configured question (None when it has none: ALL-OOT).
        settings: the cascade settings.
        extra_key: anything else the version must change with (e.g. prompt settings).
    """
    names = tuple(name for name, _ in llms)
    classes = tuple(class_words)
    eligible = tuple(tuple(scores.eligible_tasks(name, classes)) if scores else () for name in names)
    common = tuple(t for t in eligible[0] if all(t in e for e in eligible[1:])) if eligible else ()
    similar = bool(common) and settings.similar_tasks and bool(question and question.strip())
    kind = "default-rule" if not common else "oot-sim" if similar else "oot-all"
    similar_to = question.strip() if similar and question else None
    key = {
        "kind": kind,
        "llms": [list(pair) for pair in llms],
        "classes": list(classes),
        "scores": scores.sha256 if scores is not None and any(eligible) else None,
        "content_free": scores.content_free_sha256
        if scores is not None and settings.correction == "CC"
        else None,
        "settings": settings.to_dict(),
        "question": similar_to,
        "extra": dict(extra_key or {}),
    }
    return OOTPlan(
        kind=kind,
        version=f"{kind}-{fingerprint(key)}",
        llms=names,
        classes=classes,
        eligible=eligible,
        common=common,
        question=similar_to,
        settings=settings,
    )


@dataclass
class OOTModel:
    """A built out-of-task model: the version name, the servable model and where it came from."""

    version: str
    kind: str
    model: ServingModel
    sources: dict[str, list[str]] = field(default_factory=dict)  # per LLM (and "policy"): the source tasks
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:  # the interface of a served version (name + model)
        return self.version

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "kind": self.kind,
            "sources": self.sources,
            "notes": self.notes,
            "model": self.model.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OOTModel:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an out-of-task model (format {d.get('format')!r})")
        if d.get("kind") not in KINDS:
            raise ValueError(f"unknown out-of-task model kind {d.get('kind')!r}")
        return cls(
            version=str(d["version"]),
            kind=str(d["kind"]),
            model=ServingModel.from_dict(dict(d["model"])),
            sources={str(k): list(v) for k, v in dict(d.get("sources") or {}).items()},
            notes=[str(n) for n in d.get("notes") or []],
        )


def default_rule_policy(llms: Sequence[str], classes: Sequence[str], threshold: float = 0.8) -> CascadePolicy:
    """The default rule as a cascade policy: LLM k answers when its score is >= ``threshold``, else the next LLM
    is asked; at the deepest level every key answers with the weighted majority vote of all LLMs (eq. 1; the only
    LLM's answer when there is one)."""
    policy = threshold_policy(llms, classes, threshold, metadata={"kind": "default-rule"})
    if len(llms) > 1:
        policy.actions[-1][:] = policy.strategies.index("weighted_majority")
    return policy


def select_sources(
    scores: OOTScores,
    eligible: Sequence[str],
    question: str | None,
    settings: CascadeSettings,
    embed: Embed | None,
) -> tuple[list[str], str | None]:
    """The source tasks among ``eligible``: SIM-OOT when a question is given, else ALL-OOT. Returns them and a note
    when SIM-OOT fell back. ``embed`` defaults to :func:`ls_backend.embeddings.embed_texts`."""
    from ls_backend.sampling import cluster_tasks, oot_source_tasks

    if not eligible:
        return [], None
    if question is None:
        return list(eligible), None
    if embed is None:
        from ls_backend.embeddings import embed_texts

        embed = embed_texts
    names = [*scores.task_names, PROJECT]
    vectors = np.asarray(embed([scores.texts[n] for n in scores.task_names] + [question]), dtype=np.float64)
    n_clusters = settings.n_clusters or max(1, round(math.sqrt(len(scores.task_names))))
    clusters = cluster_tasks(vectors, n_clusters)
    sources = oot_source_tasks(PROJECT, names, clusters, eligible=eligible, embeddings=vectors)
    return list(sources.tasks), sources.fallback


def build_oot_model(plan: OOTPlan, scores: OOTScores | None, embed: Embed | None = None) -> OOTModel:
    """Fit the planned model: per-LLM out-of-task calibrators and the default policy (see the module docstring)."""
    settings = plan.settings
    notes: list[str] = []
    sources: dict[str, list[str]] = {}
    question = plan.question if plan.kind == "oot-sim" else None
    calibrators: list[Calibrator] = []
    correction = settings.correction
    answer = check_answer_rules(settings.answer, len(plan.llms))
    for name, eligible in zip(plan.llms, plan.eligible, strict=True):
        chosen: list[str] = []
        if scores is not None and eligible:
            chosen, fallback = select_sources(scores, eligible, question, settings, embed)
            if fallback:
                notes.append(f"{name}: SIM-OOT {fallback}")
        if not chosen or scores is None:
            calibrators.append(
                make_calibrator("none").fit(np.zeros((1, len(plan.classes))), np.zeros(1, int))
            )
            notes.append(
                f"{name}: identity calibrator (no out-of-task scores for this LLM and these classes)"
            )
            continue
        parts = [scores.part(task, [name], plan.classes, correction) for task in chosen]
        calibrators.append(fit_oot_calibrator(settings.calibrator, parts, 0))
        sources[name] = chosen
        n_labels = sum(p.labels.size for p in parts)
        corrected_by = "" if correction == "none" else f" (each corrected by its own {correction})"
        notes.append(
            f"{name}: {settings.calibrator} on {n_labels} labeled items of {len(chosen)} other tasks{corrected_by}"
        )

    if plan.kind == "default-rule" or scores is None:
        policy = default_rule_policy(plan.llms, plan.classes, settings.threshold)
        notes.append(
            f"policy: default rule (answer when the score is >= {settings.threshold:g}, else ask the next LLM; "
            "weighted majority at the deepest level): no labeled items scored by every LLM with these classes"
        )
    else:
        policy_tasks, fallback = select_sources(scores, plan.common, question, settings, embed)
        if fallback:
            notes.append(f"policy: SIM-OOT {fallback}")
        parts = [scores.part(task, plan.llms, plan.classes, correction) for task in policy_tasks]
        policy = train_oot_policy(
            parts, calibrators, answer, settings.n_bins, settings.lam, plan.llms, plan.classes,
            metadata={"kind": plan.kind, "source_tasks": policy_tasks},
        )  # fmt: skip
        sources["policy"] = policy_tasks
        notes.append(
            f"policy: Algorithm 1 (lambda {settings.lam:g}, {settings.n_bins} quantile bins per LLM) on "
            f"{sum(p.labels.size for p in parts)} labeled items of {len(policy_tasks)} other tasks, training "
            f"accuracy {policy.metadata['train_accuracy']:.3f}"
        )
    model = ServingModel(plan.llms, plan.classes, calibrators, policy, answer)
    return OOTModel(plan.version, plan.kind, model, sources, notes)


class OOTModelCache:
    """Built out-of-task models as JSON files ``<folder>/<version>.json`` (written atomically), and in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._memory: dict[str, OOTModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, plan: OOTPlan, build: Callable[[], OOTModel]) -> OOTModel:
        """The model of ``plan``: from memory, else from its file, else built (once, even with concurrent calls)."""
        with self._lock:
            if plan.version in self._memory:
                return self._memory[plan.version]
            lock = self._locks.setdefault(plan.version, threading.Lock())
        with lock:
            with self._lock:
                if plan.version in self._memory:
                    return self._memory[plan.version]
            model = self._read(plan) or self._write(build())
            with self._lock:
                self._memory[plan.version] = model
            return model

    def cached(self, version: str) -> OOTModel | None:
        with self._lock:
            return self._memory.get(version)

    def _path(self, version: str) -> Path:
        return self.folder / f"{version}.json"

    def _read(self, plan: OOTPlan) -> OOTModel | None:
        path = self._path(plan.version)
        if not path.exists():
            return None
        try:
            model = OOTModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if model.version != plan.version or model.model.llms != plan.llms:
                raise ValueError("it belongs to another version")
            return model
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring the cached out-of-task model %s (%s); fitting it again", path, e)
            return None

    def _write(self, model: OOTModel) -> OOTModel:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self._path(model.version), json.dumps(model.to_dict()))
        except OSError as e:  # a read-only model dir costs a refit after restart, not the prediction
            logger.warning("could not save the out-of-task model under %s: %s", self.folder, e)
        return model
