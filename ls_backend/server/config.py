"""The backend's configuration: a YAML file (``LWC_CONFIG``) merged with each project's ``extra_params``.

The file and ``extra_params`` have the same shape; ``extra_params`` (per project, set in Label Studio when the
ML backend is connected) wins key by key, mappings merged recursively, lists replaced::

    question: "Is this SMS message spam?"   # default: the project's description or instructions
    llms: [...]                # LLM entries, cheapest first (ls_backend.llms.config); default: the 3 packaged
    prompt: {...}              # prompt settings (PromptSettings)
    cascade: {...}             # the out-of-task model: calibrator, bins, lambda, default rule (CascadeSettings)
    max_text_chars: 2000       # longer texts are cut to this many characters
    max_tasks: 10000           # most tasks one /predict may carry
    confidence_bands: [0, 0.5, 0.6, 0.7, 0.8, 0.9, 1]   # the bands of the predictions metric
    model_dir: ...             # server only: score cache and out-of-task models (default $LWC_MODEL_DIR)
    oot_scores: ...            # server only: other tasks' labeled scores (default: the packaged benchmark table)
    oot_tasks: ...             # server only: their tasks file (default: tasks.yaml next to oot_scores)
    loop: {...}                # the learning loop: routing thresholds, retrain settings (LearningSettings)
    limits: {...}              # server only: projects, stored copies, JSON nesting (LimitSettings)

Every key is a field of a typed model below (pydantic, :mod:`ls_backend.settings`): its type says what it accepts,
and an error says which key is wrong, what it must be and what it got. Unknown keys are errors.

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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval, Len, MaxLen
from pydantic import AfterValidator, Field, ValidationError, model_validator

from ls_backend.data import BENCHMARK_SCORES
from ls_backend.loop.events import exceeds_depth
from ls_backend.loop.trainer import LoopConfig
from ls_backend.server.trust import (
    LLMNames,
    Project,
    check_project_settings,
    describe_rules,
    offered_names,
    project_model,
)
from ls_backend.settings import ListAsTuple, NonBlank, Real, Says, Settings, SettingsError, problems, unset

CONFIG_ENV = "LWC_CONFIG"
MODEL_DIR_ENV = "LWC_MODEL_DIR"
OOT_SCORES_ENV = "LWC_OOT_SCORES"
CALIBRATOR_NAMES = ("none", "ST", "SV")
CORRECTION_NAMES = ("none", "CC", "BC")  # ls_backend.calibration.CORRECTIONS
ANSWER_NAMES = ("llm", "calibrated")  # ls_backend.loop.model.ANSWER_RULES
EXTRA_PARAMS_DEPTH = 8
"""The deepest nesting ``extra_params`` may have (its deepest setting, ``prompt.examples``, is 3 levels)."""

DEFAULT_LLMS: tuple[dict[str, Any], ...] = (
    {"name": "smollm2-135m-instruct", "kind": "packaged", "model": "smollm2-135m-instruct"},
    {"name": "gemma3-270m", "kind": "packaged", "model": "gemma3-270m"},
    {"name": "qwen2.5-coder-0.5b-instruct", "kind": "packaged", "model": "qwen2.5-coder-0.5b-instruct"},
)
"""The cascade when the configuration lists no LLM: the three packaged models, cheapest first (their prompt style,
chat or plain, comes from :mod:`ls_backend.llms.packaged`). ``config/default.yaml`` spells out the same."""


class ConfigError(SettingsError):
    """A configuration value that is missing, of the wrong type, out of range or unknown."""


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


# ---------------------------------------------------------------------------------------------------------------
# the settings


def _increasing(bands: tuple[float, ...]) -> tuple[float, ...]:
    if len(bands) < 2 or any(b >= c for b, c in itertools.pairwise(bands)):
        raise ValueError(f"must be at least 2 increasing numbers, got {list(bands)}")
    return tuple(float(b) for b in bands)


def _redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, or null; got {url!r}")
    return url


def _valid_llm_entries(entries: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    from ls_backend.llms.config import parse_llm_configs

    if entries:
        parse_llm_configs(list(entries))  # its LLMConfigError (a ValueError) says which entry is wrong
    return entries


Question = Annotated[NonBlank, AfterValidator(str.strip)]
FilePath = Annotated[NonBlank, Says("a path (a non-empty string)")]
Examples = Annotated[list[Annotated[list[str], Len(2, 2)]], Says("a list of [text, class] pairs of strings")]


class PromptSettings(Settings):
    """The ``prompt`` section: how the question is put to every LLM (an LLM's own prompt overrides win; the
    question and the classes are the project's). See :class:`ls_backend.llms.prompts.PromptTemplate`."""

    system: NonBlank | None = None
    template: NonBlank = unset()  # unset: PromptTemplate's default
    chat: bool = False
    max_text_chars: Annotated[int, Ge(1)] = unset()  # unset: the top-level max_text_chars
    examples: Examples = Field(default_factory=list)


class CascadeSettings(Settings):
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

    calibrator: Literal["none", "ST", "SV"] = "ST"
    n_bins: Annotated[int, Ge(1)] = 5
    lam: Annotated[Real, Ge(0)] = 0.0
    threshold: Annotated[Real, Interval(gt=0, le=1)] = 0.8
    similar_tasks: bool = True
    n_clusters: Annotated[int, Ge(1)] | None = None
    batch_size: Annotated[int, Ge(1)] = 16
    # chosen by docs/results.md's answer study (the selection score over balanced and natural-ratio tasks)
    correction: Literal["none", "CC", "BC"] = "CC"
    answer: Literal["llm", "calibrated"] = "calibrated"
    bc_min_items: Annotated[int, Ge(1)] = 10

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> CascadeSettings:
        return BackendConfig.from_mapping({"cascade": data}, source).cascade_settings

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class LearningSettings(LoopConfig):
    """The learning loop of a project (docs/learning-loop.md): the ``loop`` section of the configuration, the
    trainer's :class:`ls_backend.loop.LoopConfig` (``review_threshold``, ``retrain_every``, ``n_trials``, ...)
    and what the server itself reads:

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
        label_store_sync: how the label store commits (SQLite's ``synchronous``). ``normal`` (default): an
            acknowledged webhook survives a crash or kill -9 of the server; a power cut or OS crash may lose the
            events stored since the last WAL checkpoint, whose labels the catch-up from Label Studio at the next
            start restores. ``full``: every commit is fsynced and survives a power cut too, for about twice the
            CPU per webhook (docs/learning-loop.md, "Webhooks during a retrain").
    """

    enabled: bool = True
    auto_accept_threshold: Annotated[Real, Interval(ge=0, le=1)] | None = None
    views: bool = True
    uncertainty_sampling: bool = True
    poll_s: Annotated[Real, Gt(0)] = 5.0
    catch_up_retry_s: Annotated[Real, Gt(0)] = 60.0
    idle_stop_s: Annotated[Real, Gt(0)] | None = 600.0
    tuning_process: bool = True
    job_batch_size: Annotated[int, Ge(1)] = 50
    refresh_on_promotion: bool = True
    label_store_sync: Literal["normal", "full"] = "normal"
    job_backend: Literal["embedded", "rq"] = "embedded"
    redis_url: (
        Annotated[str, AfterValidator(_redis_url), Says("a redis://, rediss:// or unix:// URL")] | None
    ) = None

    @model_validator(mode="after")
    def _consistent(self) -> LearningSettings:
        auto = self.auto_accept_threshold
        if auto is not None and auto < self.review_threshold:
            raise ValueError(f"auto_accept_threshold must be null or in [review_threshold, 1], got {auto!r}")
        if self.job_backend == "rq" and self.redis_url is None:
            raise ValueError("job_backend rq needs redis_url")
        return self

    def loop_config(self) -> LoopConfig:
        """The trainer's :class:`ls_backend.loop.LoopConfig`."""
        return LoopConfig.model_validate(self.model_dump(include=set(LoopConfig.model_fields)))


class LimitSettings(Settings):
    """What one server holds at most (the ``limits`` section; server file only).

    Attributes:
        max_projects: projects the server serves (registered by /setup or a first /predict with tasks); a new
            one beyond answers 503.
        max_stored_text_chars: a task text longer than this is stored cut to it (with its length and sha256).
        max_stored_event_bytes: a webhook payload longer than this is stored cut to it (with its size and
            sha256; the label is read from the whole payload).
        max_json_depth: a request body nested deeper than this answers 400 (a webhook is stored as ignored).
    """

    max_projects: Annotated[int, Ge(1)] = 1000
    max_stored_text_chars: Annotated[int, Ge(1)] = 100_000
    max_stored_event_bytes: Annotated[int, Ge(1)] = 1 << 20
    max_json_depth: Annotated[int, Ge(1)] = 100


class BackendConfig(Settings):
    """A validated configuration (see the module docstring). ``prompt`` and ``cascade`` are also readable as
    the mappings of what was set (:attr:`prompt`, :attr:`cascade`): the LLMs' prompts and the model versions'
    fingerprints are made of those."""

    question: Question | None = None
    llms: Annotated[
        tuple[dict[str, Any], ...],
        ListAsTuple,
        AfterValidator(_valid_llm_entries),
        Says("a list of LLM entries, cheapest first (ls_backend/llms/config.py)"),
    ] = ()
    prompt_settings: PromptSettings = Field(default_factory=PromptSettings, alias="prompt")
    cascade_settings: CascadeSettings = Field(default_factory=CascadeSettings, alias="cascade")
    max_text_chars: Annotated[int, Ge(1)] = 2000
    max_tasks: Annotated[int, Ge(1)] = 10000
    confidence_bands: Annotated[
        tuple[Real, ...], ListAsTuple, AfterValidator(_increasing), Says("at least 2 increasing numbers")
    ] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    model_dir: FilePath | None = None
    oot_scores: FilePath | None = None
    oot_tasks: FilePath | None = None
    learning: LearningSettings = Field(default_factory=LearningSettings, alias="loop")
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str = "config") -> BackendConfig:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as e:
            raise ConfigError(f"{source}: " + "; ".join(problems(e, cls))) from None

    @property
    def prompt(self) -> dict[str, Any]:
        """The prompt settings the configuration sets (unset ones are left to the prompt's defaults)."""
        return self.prompt_settings.model_dump(exclude_unset=True)

    @property
    def cascade(self) -> dict[str, Any]:
        """The cascade settings the configuration sets."""
        return self.cascade_settings.model_dump(exclude_unset=True)

    def as_set(self) -> dict[str, Any]:
        """What this configuration sets, in the shape of its file (what a project's ``extra_params`` go on)."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def merged(self, override: Mapping[str, Any], source: str = "extra_params") -> BackendConfig:
        """This (the server's) configuration with a project's ``extra_params`` on top: only the keys of
        :data:`PROJECT_SETTINGS`, within their rules; LLMs are picked by name from :meth:`llm_catalog`."""
        if not override:
            return self
        found = check_project_settings(
            override, PROJECT_MODEL, PROJECT_SETTINGS, SERVER_SETTINGS, self.server_value
        )
        if found:
            raise ConfigError(f"{source}: " + "; ".join(found))
        chosen = dict(override)
        if "llms" in chosen:
            catalog = {str(e["name"]): dict(e) for e in self.llm_catalog()}
            chosen["llms"] = [catalog[name] for name in chosen["llms"]]
        return BackendConfig.from_mapping(deep_merge(self.as_set(), chosen), source=source)

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
        if section == "prompt":
            return self.prompt.get(key, self.max_text_chars if key == "max_text_chars" else None)
        owner = {"": self, "cascade": self.cascade_settings, "loop": self.learning, "limits": self.limits}
        return getattr(owner[section], key, None)

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


# ---- who may set what (docs/server.md, "Who may set what", is written from these two tables and the models)
# A project's extra_params may set exactly these keys, each within its type in the models above, narrowed by its
# rule (a cap, fewer choices, a shorter text, at most the server's own value). To let projects set a setting, add
# a line here; to keep it the server's, add it to SERVER_SETTINGS with why. tests/test_server_units.py fails for a
# setting in neither, and when docs/server.md's table is not the one they make (scripts/write_settings_table.py).
PROJECT_SETTINGS: dict[str, Project] = {
    "question": Project(max_length=2000),
    "llms": Project(type=LLMNames),
    "max_text_chars": Project(at_most_server=True),
    "max_tasks": Project(at_most_server=True),
    "prompt.system": Project(max_length=4000),
    "prompt.template": Project(max_length=4000),
    "prompt.chat": Project(),
    "prompt.max_text_chars": Project(at_most_server=True),
    "prompt.examples": Project(
        type=Annotated[
            list[Annotated[list[Annotated[str, MaxLen(2000)]], Len(2, 2)]],
            MaxLen(50),
            Says("at most 50 examples, each a [text, class] pair of strings of at most 2000 characters"),
        ]
    ),
    "cascade.calibrator": Project(),
    "cascade.n_bins": Project(le=20),
    "cascade.lam": Project(),
    "cascade.threshold": Project(),
    "cascade.similar_tasks": Project(),
    "cascade.n_clusters": Project(le=1000),
    "cascade.batch_size": Project(at_most_server=True),
    "cascade.correction": Project(),
    "cascade.answer": Project(),
    "cascade.bc_min_items": Project(le=100_000),
    "loop.review_threshold": Project(),
    "loop.auto_accept_threshold": Project(),
    "loop.views": Project(),
    "loop.uncertainty_sampling": Project(),
    "loop.calibrator": Project(choices=("none", "ST", "SV", "MS")),
    "loop.review_labels": Project(),
    "loop.holdout_fraction": Project(),
    "loop.n_bins": Project(le=20),
    "loop.n_trials": Project(at_most_server=True),
    "loop.tuning_timeout_s": Project(at_most_server=True),
    "loop.n_splits": Project(at_most_server=True),
    "loop.lam": Project(),
    "loop.cost_weight": Project(),
    "loop.min_train_labels": Project(),
    "loop.min_tuning_labels": Project(),
    "loop.min_calibration_labels": Project(),
    "loop.min_holdout_labels": Project(),
    "loop.accuracy_tolerance": Project(),
    "loop.ace_tolerance": Project(),
    "loop.retrain_every": Project(),
    "loop.seed": Project(le=2**32 - 1),
    "loop.answer": Project(),
    "loop.cv_folds": Project(le=20),
    "loop.student": Project(),
    "loop.student_min_labels": Project(le=100_000),
    "loop.student_c": Project(ge=1e-4, le=1e4),
    "loop.job_batch_size": Project(at_most_server=True),
    "loop.refresh_on_promotion": Project(),
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
    "loop.label_store_sync": "the server's label store, shared by every project",
}


PROJECT_MODEL = project_model(BackendConfig, PROJECT_SETTINGS)
"""The pydantic model of a project's ``extra_params`` (:func:`ls_backend.server.trust.project_model`)."""


def settings_table() -> str:
    """docs/server.md's table of every key, who may set it and to what (scripts/write_settings_table.py)."""
    lines = [
        "| key | who may set it | what a project may set it to (or why only the server) |",
        "|---|---|---|",
    ]
    for path, who, what in describe_rules(BackendConfig, PROJECT_SETTINGS, SERVER_SETTINGS):
        lines.append(f"| `{path}` | {who} | {what} |")
    return "\n".join(lines)


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
    return BackendConfig.from_mapping(data, source=str(path))
