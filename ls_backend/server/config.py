"""The backend's configuration: a YAML file (``LWC_CONFIG``) merged with each project's ``extra_params``.

The file and ``extra_params`` have the same shape; ``extra_params`` (per project, set in Label Studio when the
ML backend is connected) wins key by key, mappings merged recursively, lists replaced::

    question: "Is this SMS message spam?"   # default: the project's description or instructions
    llms: [...]                # LLM specs, cheapest first (read by ls_backend.llms); default: the 3 packaged
    prompt: {...}              # prompt template settings (read by ls_backend.llms)
    cascade: {...}             # the out-of-task model: calibrator, bins, lambda, default rule (CascadeSettings)
    max_text_chars: 2000       # longer texts are cut to this many characters
    max_tasks: 10000           # most tasks one /predict may carry
    confidence_bands: [0, 0.5, 0.6, 0.7, 0.8, 0.9, 1]   # the bands of the predictions metric
    model_dir: ...             # server only: score cache and out-of-task models (default $LWC_MODEL_DIR)
    oot_scores: ...            # server only: other tasks' labeled scores (default: the packaged benchmark table)
    oot_tasks: ...             # server only: their tasks file (default: tasks.yaml next to oot_scores)
    loop: {...}                # the learning loop: routing thresholds, retrain settings (LearningSettings)
    limits: {...}              # server only: projects, stored copies, JSON nesting (LimitSettings)

**Who may set what.** A project's ``extra_params`` (which anyone who can edit the project in Label Studio sets,
and without basic auth anyone who reaches /setup) may only set the keys of :data:`PROJECT_SETTINGS`, each within
its rule (:mod:`ls_backend.server.trust`): it picks LLMs the server defines by name and tunes prompt, cascade and
loop settings, within the server's limits. Every other key is the server's (:data:`SERVER_SETTINGS`): an
environment variable name, a URL, a file path or a model id never comes from a project.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ls_backend.data import BENCHMARK_SCORES
from ls_backend.loop.events import exceeds_depth
from ls_backend.server.trust import (
    Choice,
    Examples,
    Flag,
    Integer,
    LLMNames,
    Number,
    Rule,
    Text,
    check_project_settings,
    offered_names,
)

CONFIG_ENV = "LWC_CONFIG"
MODEL_DIR_ENV = "LWC_MODEL_DIR"
OOT_SCORES_ENV = "LWC_OOT_SCORES"
SERVER_ONLY_KEYS = ("model_dir", "oot_scores", "oot_tasks")
KNOWN_KEYS = (
    "question",
    "llms",
    "prompt",
    "cascade",
    "max_text_chars",
    "max_tasks",
    "confidence_bands",
    "loop",
    "limits",
    *SERVER_ONLY_KEYS,
)
CALIBRATOR_NAMES = ("none", "ST", "SV")
CORRECTION_NAMES = ("none", "CC", "BC")  # ls_backend.calibration.CORRECTIONS
ANSWER_NAMES = ("llm", "calibrated")  # ls_backend.loop.model.ANSWER_RULES
JOB_BACKENDS = ("embedded", "rq")
EXTRA_PARAMS_DEPTH = 8
"""The deepest nesting ``extra_params`` may have (its deepest setting, ``prompt.examples``, is 3 levels)."""

DEFAULT_LLMS: tuple[dict[str, Any], ...] = (
    {"name": "smollm2-135m-instruct", "kind": "packaged", "model": "smollm2-135m-instruct"},
    {"name": "gemma3-270m", "kind": "packaged", "model": "gemma3-270m"},
    {"name": "qwen2.5-coder-0.5b-instruct", "kind": "packaged", "model": "qwen2.5-coder-0.5b-instruct"},
)
"""The cascade when the configuration lists no LLM: the three packaged models, cheapest first (their prompt style,
chat or plain, comes from :mod:`ls_backend.llms.packaged`). ``config/default.yaml`` spells out the same."""

# ---- who may set what (docs/server.md, "Who may set what"; ls_backend/server/trust.py)
# A project's extra_params may set exactly these keys, within their rules. To let projects set a new plain
# choice, add one line here (e.g. "cascade.answer": Choice(("llm", "calibrated"))); a key in neither table is
# refused for projects, and tests/test_server_units.py fails until every setting is in one of them.
PROJECT_SETTINGS: dict[str, Rule] = {
    "question": Text(2000, nullable=True),
    "llms": LLMNames(),
    "max_text_chars": Integer(1, at_most_server=True),
    "max_tasks": Integer(1, at_most_server=True),
    "prompt.system": Text(4000, nullable=True),
    "prompt.template": Text(4000),
    "prompt.chat": Flag(),
    "prompt.max_text_chars": Integer(1, at_most_server=True),
    "prompt.examples": Examples(max_items=50, max_chars=2000),
    "cascade.calibrator": Choice(CALIBRATOR_NAMES),
    "cascade.n_bins": Integer(1, 20),
    "cascade.lam": Number(0.0),
    "cascade.threshold": Number(0.0, 1.0, low_open=True),
    "cascade.similar_tasks": Flag(),
    "cascade.n_clusters": Integer(1, 1000, nullable=True),
    "cascade.batch_size": Integer(1, at_most_server=True),
    "loop.review_threshold": Number(0.0, 1.0),
    "loop.auto_accept_threshold": Number(0.0, 1.0, nullable=True),
    "loop.views": Flag(),
    "loop.uncertainty_sampling": Flag(),
    "loop.calibrator": Choice(("none", "ST", "SV", "MS")),
    "loop.review_labels": Choice(("exclude", "unweighted", "poststratified")),
    "loop.holdout_fraction": Number(0.0, 1.0, low_open=True, high_open=True),
    "loop.n_bins": Integer(2, 20),
    "loop.n_trials": Integer(1, at_most_server=True),
    "loop.tuning_timeout_s": Number(0.0, low_open=True, at_most_server=True, nullable=True),
    "loop.n_splits": Integer(1, at_most_server=True),
    "loop.lam": Number(0.0),
    "loop.cost_weight": Number(0.0),
    "loop.min_train_labels": Integer(1),
    "loop.min_tuning_labels": Integer(1),
    "loop.min_calibration_labels": Integer(1),
    "loop.min_holdout_labels": Integer(0),
    "loop.accuracy_tolerance": Number(0.0, 1.0),
    "loop.ace_tolerance": Number(0.0, 1.0),
    "loop.retrain_every": Integer(0),
    "loop.seed": Integer(0, 2**32 - 1),
    "loop.answer": Choice(ANSWER_NAMES, nullable=True),
    "loop.cv_folds": Integer(0, 20),
    "loop.student": Flag(),
    "loop.student_min_labels": Integer(2, 100_000),
    "loop.student_c": Number(1e-4, 1e4),
    "cascade.correction": Choice(CORRECTION_NAMES),
    "cascade.answer": Choice(ANSWER_NAMES),
    "cascade.bc_min_items": Integer(1, 100_000),
    "loop.job_batch_size": Integer(1, at_most_server=True),
    "loop.refresh_on_promotion": Flag(),
}
# Only the server's config file sets these (a section name covers all its keys): why, for the error message.
SERVER_SETTINGS: dict[str, str] = {
    "model_dir": "a folder on the server",
    "oot_scores": "a file on the server",
    "oot_tasks": "a file on the server",
    "confidence_bands": "the server's metrics, shared by every project",
    "limits": "the server's resources",
    "loop.enabled": "the server's learning loop, for every project",
    "loop.poll_s": "the server's threads",
    "loop.catch_up_retry_s": "the server's calls to Label Studio",
    "loop.idle_stop_s": "the server's threads",
    "loop.tuning_process": "the server's processes",
    "loop.job_backend": "where the server runs pre-annotation jobs (its threads or an RQ queue)",
    "loop.redis_url": "a URL of the server's Redis",
}


class ConfigError(ValueError):
    """A configuration value that is missing, of the wrong type or out of range."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merged key by key, anything else replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_extra_params(extra_params: Any) -> dict[str, Any]:
    """Label Studio's ``extra_params``: ``null``, a JSON object as a string, or an object (at most
    :data:`EXTRA_PARAMS_DEPTH` levels deep)."""
    if extra_params is None:
        return {}
    if isinstance(extra_params, str):
        if not extra_params.strip():
            return {}
        try:
            extra_params = json.loads(extra_params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"extra_params is not valid JSON: {e}") from e
        except RecursionError:
            raise ConfigError(f"extra_params is nested deeper than {EXTRA_PARAMS_DEPTH} levels") from None
        if extra_params is None:
            return {}
    if not isinstance(extra_params, Mapping):
        raise ConfigError(f"extra_params must be a JSON object, got {type(extra_params).__name__}")
    if exceeds_depth(extra_params, EXTRA_PARAMS_DEPTH):
        raise ConfigError(f"extra_params is nested deeper than {EXTRA_PARAMS_DEPTH} levels")
    return dict(extra_params)


@dataclass(frozen=True)
class CascadeSettings:
    """How the out-of-task model is made before any in-task label exists (see docs/server.md).

    Attributes:
        calibrator: the calibrator fitted per LLM on other tasks' labeled scores (``ST``, ``SV`` or ``none``).
        n_bins: bins per LLM of the default policy (equal-frequency edges of the out-of-task calibrated scores).
        lam: cost weight of the default policy's reward (0: the paper's Algorithm 1).
        threshold: the simple rule's confidence threshold when there are no out-of-task scores.
        similar_tasks: SIM-OOT (the tasks most similar to the project's description) rather than ALL-OOT.
        n_clusters: clusters of task descriptions for SIM-OOT (None: round(sqrt(number of tasks))).
        batch_size: texts per LLM call.
        correction: the label-free bias correction in front of every calibrator: ``none``, ``CC`` (contextual
            calibration on content-free inputs) or ``BC`` (batch calibration on the project's own items, with CC
            until ``bc_min_items`` items were scored; see docs/server.md).
        answer: how an LLM's answer is read: ``llm`` (its own answer) or ``calibrated`` (the argmax of its
            corrected, calibrated probabilities).
        bc_min_items: how many of a project's items an LLM must have scored before batch calibration replaces
            the contextual one; the estimate is refitted each time the count doubles.
    """

    calibrator: str = "ST"
    n_bins: int = 5
    lam: float = 0.0
    threshold: float = 0.8
    similar_tasks: bool = True
    n_clusters: int | None = None
    batch_size: int = 16
    # chosen by docs/results.md's answer study (the selection score over balanced and natural-ratio tasks)
    correction: str = "CC"
    answer: str = "calibrated"
    bc_min_items: int = 10

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> CascadeSettings:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown cascade key(s) {unknown}; expected some of {known}")
        settings = cls(**dict(data))
        where = f"{source}: cascade"
        if settings.calibrator not in CALIBRATOR_NAMES:
            raise ConfigError(
                f"{where}.calibrator must be one of {list(CALIBRATOR_NAMES)}, got {settings.calibrator!r}"
            )
        for name in ("n_bins", "batch_size", "bc_min_items"):
            _check_positive_int(getattr(settings, name), f"{where}.{name}")
        if settings.correction not in CORRECTION_NAMES:
            raise ConfigError(
                f"{where}.correction must be one of {list(CORRECTION_NAMES)}, got {settings.correction!r}"
            )
        if settings.answer not in ANSWER_NAMES:
            raise ConfigError(f"{where}.answer must be one of {list(ANSWER_NAMES)}, got {settings.answer!r}")
        if settings.n_clusters is not None:
            _check_positive_int(settings.n_clusters, f"{where}.n_clusters")
        if not _is_number(settings.lam) or settings.lam < 0:
            raise ConfigError(f"{where}.lam must be a finite number >= 0, got {settings.lam!r}")
        if not _is_number(settings.threshold) or not 0.0 < settings.threshold <= 1.0:
            raise ConfigError(f"{where}.threshold must be a number in (0, 1], got {settings.threshold!r}")
        if not isinstance(settings.similar_tasks, bool):
            raise ConfigError(f"{where}.similar_tasks must be true or false, got {settings.similar_tasks!r}")
        return settings

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


LOOP_SERVER_KEYS = (
    "enabled",
    "auto_accept_threshold",
    "views",
    "uncertainty_sampling",
    "poll_s",
    "catch_up_retry_s",
    "idle_stop_s",
    "tuning_process",
    "job_batch_size",
    "refresh_on_promotion",
    "job_backend",
    "redis_url",
)
"""The ``loop`` keys the server itself reads (the rest are the trainer's LoopConfig); who may set them is in
:data:`PROJECT_SETTINGS` and :data:`SERVER_SETTINGS`."""


@dataclass(frozen=True)
class LearningSettings:
    """The learning loop of a project (docs/learning-loop.md): the ``loop`` section of the configuration.

    Attributes:
        enabled: store webhook labels, route tasks, retrain (off: /webhook only acknowledges).
        auto_accept_threshold: predictions scoring at least this are accepted as annotations made by the backend
            (None: never; the labels it makes never feed the calibrators or the policy).
        views: create the Data Manager views "Needs review" and "Calibration sample" through label-studio-sdk.
        uncertainty_sampling: set the project's task sampling to "Uncertainty sampling" (least confident first).
        poll_s: how often the retrain worker looks for due retrains and ``lwc retrain`` requests.
        catch_up_retry_s: how long after a failed catch-up from Label Studio the backend tries again.
        idle_stop_s: a project's retrain worker thread stops after this many seconds with nothing to do, and
            starts again when there is (None: never stops).
        tuning_process: tune the bin edges of a retrain in a separate process, so that the tuning (seconds of
            Python) never holds the request threads' interpreter lock (false: in the worker thread).
        job_batch_size: tasks per batch of a pre-annotation job (predicted together, created in one request).
        refresh_on_promotion: after a promotion or rollback of a project's version, re-predict its tasks with it.
        job_backend: where jobs run: ``embedded`` (threads of the server, state in the label store) or ``rq``
            (an RQ queue on ``redis_url``, run by ``lwc worker`` processes).
        redis_url: the Redis of the ``rq`` job backend (``redis://host:6379/0``).
        retrain: the remaining keys, the trainer's :class:`ls_backend.loop.LoopConfig` (``review_threshold``,
            ``retrain_every``, ``n_trials``, ``min_holdout_labels``, ...).
    """

    enabled: bool = True
    auto_accept_threshold: float | None = None
    views: bool = True
    uncertainty_sampling: bool = True
    poll_s: float = 5.0
    catch_up_retry_s: float = 60.0
    idle_stop_s: float | None = 600.0
    tuning_process: bool = True
    job_batch_size: int = 50
    refresh_on_promotion: bool = True
    job_backend: str = "embedded"
    redis_url: str | None = None
    retrain: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> LearningSettings:
        from ls_backend.loop.trainer import LoopConfig

        where = f"{source}: loop"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {data!r}")
        server = {k: data[k] for k in LOOP_SERVER_KEYS if k in data}
        retrain = {k: v for k, v in data.items() if k not in LOOP_SERVER_KEYS}
        try:
            loop = LoopConfig.from_dict(dict(retrain))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
        settings = cls(**server, retrain=retrain)
        if isinstance(settings.job_batch_size, bool) or not isinstance(settings.job_batch_size, int):
            raise ConfigError(
                f"{where}.job_batch_size must be a positive integer, got {settings.job_batch_size!r}"
            )
        if settings.job_batch_size < 1:
            raise ConfigError(
                f"{where}.job_batch_size must be a positive integer, got {settings.job_batch_size!r}"
            )
        if settings.job_backend not in JOB_BACKENDS:
            raise ConfigError(
                f"{where}.job_backend must be one of {list(JOB_BACKENDS)}, got {settings.job_backend!r}"
            )
        if settings.redis_url is not None and (
            not isinstance(settings.redis_url, str)
            or not settings.redis_url.startswith(("redis://", "rediss://", "unix://"))
        ):
            raise ConfigError(f"{where}.redis_url must be a redis:// URL or null, got {settings.redis_url!r}")
        if settings.job_backend == "rq" and settings.redis_url is None:
            raise ConfigError(f"{where}.job_backend rq needs {where}.redis_url")
        for name in ("enabled", "views", "uncertainty_sampling", "tuning_process", "refresh_on_promotion"):
            if not isinstance(getattr(settings, name), bool):
                raise ConfigError(f"{where}.{name} must be true or false, got {getattr(settings, name)!r}")
        for name in ("poll_s", "catch_up_retry_s"):
            value = getattr(settings, name)
            if not _is_number(value) or value <= 0:
                raise ConfigError(f"{where}.{name} must be a number > 0, got {value!r}")
        idle = settings.idle_stop_s
        if idle is not None and (not _is_number(idle) or idle <= 0):
            raise ConfigError(f"{where}.idle_stop_s must be null or a number > 0, got {idle!r}")
        if not _is_number(loop.review_threshold) or not 0.0 <= loop.review_threshold <= 1.0:
            raise ConfigError(f"{where}.review_threshold must be in [0, 1], got {loop.review_threshold!r}")
        auto = settings.auto_accept_threshold
        if auto is not None and (not _is_number(auto) or not loop.review_threshold <= auto <= 1.0):
            raise ConfigError(
                f"{where}.auto_accept_threshold must be null or in [review_threshold, 1], got {auto!r}"
            )
        return settings

    def loop_config(self) -> Any:
        """The trainer's :class:`ls_backend.loop.LoopConfig`."""
        from ls_backend.loop.trainer import LoopConfig

        return LoopConfig.from_dict(dict(self.retrain))

    @property
    def review_threshold(self) -> float:
        return float(self.loop_config().review_threshold)


@dataclass(frozen=True)
class LimitSettings:
    """What one server holds at most (the ``limits`` section; server file only).

    Attributes:
        max_projects: projects the server serves (registered by /setup or a first /predict with tasks); a new
            one beyond answers 503.
        max_stored_text_chars: a task text longer than this is stored cut to it (with its length and sha256).
        max_stored_event_bytes: a webhook payload longer than this is stored cut to it (with its size and
            sha256; the label is read from the whole payload).
        max_json_depth: a request body nested deeper than this answers 400 (a webhook is stored as ignored).
    """

    max_projects: int = 1000
    max_stored_text_chars: int = 100_000
    max_stored_event_bytes: int = 1 << 20
    max_json_depth: int = 100

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> LimitSettings:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown limits key(s) {unknown}; expected some of {known}")
        settings = cls(**dict(data))
        for name in known:
            _check_positive_int(getattr(settings, name), f"{source}: limits.{name}")
        return settings


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BackendConfig:
    """A validated configuration. ``raw`` keeps the whole mapping for the LLM and cascade sections."""

    question: str | None = None
    llms: tuple[Any, ...] = ()
    prompt: Mapping[str, Any] = field(default_factory=dict)
    cascade: Mapping[str, Any] = field(default_factory=dict)
    max_text_chars: int = 2000
    max_tasks: int = 10000
    confidence_bands: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    model_dir: str | None = None
    oot_scores: str | None = None
    oot_tasks: str | None = None
    cascade_settings: CascadeSettings = field(default_factory=CascadeSettings)
    learning: LearningSettings = field(default_factory=LearningSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str = "config") -> BackendConfig:
        data = dict(data or {})
        unknown = sorted(set(data) - set(KNOWN_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; expected some of {list(KNOWN_KEYS)}")
        defaults = cls()
        question = data.get("question")
        if question is not None and (not isinstance(question, str) or not question.strip()):
            raise ConfigError(f"{source}: 'question' must be a non-empty string, got {question!r}")
        llms = data.get("llms", [])
        if not isinstance(llms, list):
            raise ConfigError(f"{source}: 'llms' must be a list (cheapest first), got {type(llms).__name__}")
        for key in ("prompt", "cascade", "loop", "limits"):
            if not isinstance(data.get(key, {}), Mapping):
                raise ConfigError(f"{source}: {key!r} must be a mapping, got {data[key]!r}")
        bands = data.get("confidence_bands", list(defaults.confidence_bands))
        if (
            not isinstance(bands, list)
            or len(bands) < 2
            or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bands
            )
            or any(b >= c for b, c in itertools.pairwise(bands))
        ):
            raise ConfigError(
                f"{source}: 'confidence_bands' must be at least 2 increasing numbers, got {bands!r}"
            )
        paths = {}
        for key in SERVER_ONLY_KEYS:
            value = data.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{source}: {key!r} must be a path (a non-empty string), got {value!r}")
            paths[key] = value
        return cls(
            question=question.strip() if question else None,
            llms=tuple(llms),
            prompt=dict(data.get("prompt", {})),
            cascade=dict(data.get("cascade", {})),
            max_text_chars=_positive_int(data, "max_text_chars", defaults.max_text_chars, source),
            max_tasks=_positive_int(data, "max_tasks", defaults.max_tasks, source),
            confidence_bands=tuple(float(b) for b in bands),
            model_dir=paths["model_dir"],
            oot_scores=paths["oot_scores"],
            oot_tasks=paths["oot_tasks"],
            cascade_settings=CascadeSettings.from_mapping(data.get("cascade", {}), source),
            learning=LearningSettings.from_mapping(data.get("loop", {}), source),
            limits=LimitSettings.from_mapping(data.get("limits", {}), source),
            raw=data,
        )

    def merged(self, override: Mapping[str, Any], source: str = "extra_params") -> BackendConfig:
        """This (the server's) configuration with a project's ``extra_params`` on top: only the keys of
        :data:`PROJECT_SETTINGS`, within their rules; LLMs are picked by name from :meth:`llm_catalog`."""
        if not override:
            return self
        problems = check_project_settings(override, PROJECT_SETTINGS, SERVER_SETTINGS, self.server_value)
        if problems:
            raise ConfigError(f"{source}: " + "; ".join(problems))
        chosen = dict(override)
        if "llms" in chosen:
            catalog = {str(e["name"]): dict(e) for e in self.llm_catalog()}
            chosen["llms"] = [catalog[name] for name in chosen["llms"]]
        return BackendConfig.from_mapping(deep_merge(self.raw, chosen), source=source)

    def llm_catalog(self) -> list[Mapping[str, Any]]:
        """The LLMs this configuration defines, cheapest first (:data:`DEFAULT_LLMS` when it lists none): the
        cascade, and what a project may pick from by name."""
        return list(self.llms) if self.llms else [dict(e) for e in DEFAULT_LLMS]

    def server_value(self, path: str) -> Any:
        """The effective value of a setting (``section.key``), as the rules of :data:`PROJECT_SETTINGS` compare
        a project's value with it (``llms``: the names offered)."""
        if path == "llms":
            return offered_names(self.llm_catalog())
        section, _, key = path.rpartition(".")
        if section == "":
            return getattr(self, key, None)
        if section == "prompt":
            return self.prompt.get(key, self.max_text_chars if key == "max_text_chars" else None)
        if section == "cascade":
            return getattr(self.cascade_settings, key, None)
        if section == "loop":
            if key in LOOP_SERVER_KEYS:
                return getattr(self.learning, key, None)
            return getattr(self.learning.loop_config(), key, None)
        return None

    def resolved_model_dir(self) -> Path:
        """Where the score cache and out-of-task models live: ``model_dir``, else ``$LWC_MODEL_DIR``, else
        ``~/.cache/label-with-confidence/backend``."""
        chosen = self.model_dir or os.environ.get(MODEL_DIR_ENV)
        if chosen:
            return Path(chosen).expanduser()
        return Path.home() / ".cache" / "label-with-confidence" / "backend"

    def resolved_oot_scores(self) -> Path:
        """Other tasks' labeled scores: ``oot_scores``, else ``$LWC_OOT_SCORES``, else the public benchmark's
        table that ships with the package (:data:`ls_backend.data.BENCHMARK_SCORES`)."""
        chosen = self.oot_scores or os.environ.get(OOT_SCORES_ENV)
        return Path(chosen).expanduser() if chosen else BENCHMARK_SCORES

    def resolved_oot_tasks(self) -> Path | None:
        """The tasks file of ``oot_scores`` (descriptions for SIM-OOT): ``oot_tasks``, else ``tasks.yaml`` beside
        the scores (None when there is none: descriptions then come from the benchmark's task list)."""
        if self.oot_tasks:
            return Path(self.oot_tasks).expanduser()
        beside = self.resolved_oot_scores().parent / "tasks.yaml"
        return beside if beside.exists() else None


def _positive_int(data: Mapping[str, Any], key: str, default: int, source: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: {key!r} must be a positive integer, got {value!r}")
    return value


def load_config(path: str | Path | None = None) -> BackendConfig:
    """Read the YAML file ``path`` (default: the file named by ``$LWC_CONFIG``; none: the defaults)."""
    import yaml

    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    if path is None:
        return BackendConfig()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backend config {path} does not exist (named by {CONFIG_ENV} or --config)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return BackendConfig.from_mapping(data, source=str(path))
