"""Build a cascade's LLMs from a config: a YAML/JSON file or a dict, the LLMs listed cheapest first.

::

    llms:
      - name: smollm2                 # unique id (scores tables, score cache)
        kind: packaged                # hf | packaged | bedrock | openai (see KINDS)
        model: smollm2-135m-instruct  # hub id, local folder, GGUF file, packaged name or remote model id
        device: cpu
        dtype: auto                   # auto | float32 | bfloat16 | float16 | int8 (hf, packaged; docs/llms.md)
        batch_size: 8
        prompt: {chat: true}          # overrides of the task's prompt for this LLM
        few_shot: 0                   # the task's labeled examples to show, per class (packaged: recommended)
        cost: {unit: seconds}         # or {unit: per_token, per_input_token: 3.0e-7, per_output_token: 1.5e-6}
      - name: qwen-local
        kind: hf
        model: /models/qwen2.5-0.5b-instruct
        method: generate
        max_new_tokens: 3

``few_shot`` takes up to that many of the task's own examples (``TaskSpec.examples``) per class, in the task's
order; a packaged model defaults to its recommended count (1 for the Gemma base model, 0 for the instruct ones).

Every key other than ``name``, ``kind``, ``prompt``, ``few_shot`` and ``cost`` goes to the kind's constructor as a keyword
argument; unknown keys are rejected with the list of accepted ones. Kinds are registered in :data:`KINDS` as
``"module:attribute"`` strings, imported only when an LLM of that kind is built.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Ge
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError

from ls_backend.llms.base import LLM, CostModel
from ls_backend.llms.prompts import PromptError, PromptTemplate
from ls_backend.settings import NonBlank, Settings, problems, unset

if TYPE_CHECKING:
    from ls_backend.tasks import TaskSpec


class LLMConfigError(ValueError):
    """An LLM config entry that is missing something, names an unknown kind or has unknown fields."""


@dataclass(frozen=True)
class KindSpec:
    """How to build one kind of LLM: ``factory`` (``"module:attr"`` or ``"module:Class.method"``) is called with
    the entry's keyword arguments; ``forwards_to`` names a class whose constructor takes the factory's ``**kwargs``
    (so its parameters are accepted too)."""

    factory: str
    forwards_to: str | None = None


KINDS: dict[str, KindSpec] = {
    "hf": KindSpec("ls_backend.llms.hf:HFLLM.from_pretrained", forwards_to="ls_backend.llms.hf:HFLLM"),
    "packaged": KindSpec("ls_backend.llms.packaged:packaged_llm", forwards_to="ls_backend.llms.hf:HFLLM"),
    "bedrock": KindSpec("ls_backend.llms.bedrock:BedrockLLM"),
    "openai": KindSpec("ls_backend.llms.openai_compat:OpenAICompatibleLLM"),
}
RESERVED = ("name", "kind", "prompt", "few_shot", "cost")
# filled by the builder, never by the config
_SUPPLIED = ("self", "name", "cost_model")


def register_kind(kind: str, factory: str, forwards_to: str | None = None) -> None:
    """Add (or replace) a kind of LLM: ``factory`` is ``"module:attr"``, imported when first built."""
    if ":" not in factory:
        raise ValueError(f"register_kind: factory must look like 'package.module:attribute', got {factory!r}")
    KINDS[kind] = KindSpec(factory, forwards_to)


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _known_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    return kind


def _valid_cost(cost: dict[str, Any] | None) -> dict[str, Any] | None:
    CostModel.from_dict(cost)  # its ValueError names the unit or field that is wrong
    return cost


class PromptOverrides(Settings):
    """What one LLM's entry may change of the task's prompt (the classes and few-shot examples are the task's)."""

    question: NonBlank | None = None
    template: str = unset()
    chat: bool = False
    system: str | None = None
    max_text_chars: Annotated[int, Ge(1)] = unset()


class LLMEntry(Settings):
    """One entry of a config's ``llms`` list, as written; keys beyond these are the kind's options (its
    constructor's keyword arguments, checked against it when the LLM is built)."""

    model_config = ConfigDict(extra="allow")

    name: NonBlank
    kind: Annotated[str, AfterValidator(_known_kind)]
    prompt: Annotated[PromptOverrides, BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=PromptOverrides
    )
    few_shot: Annotated[int, Ge(0)] | None = None  # None: a packaged model's recommendation, else 0
    cost: Annotated[dict[str, Any] | None, AfterValidator(_valid_cost)] = None


@dataclass(frozen=True)
class LLMConfig:
    """One validated LLM entry of a config (nothing loaded yet)."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    prompt: dict[str, Any] = field(default_factory=dict)
    cost: CostModel = field(default_factory=CostModel)
    few_shot: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], position: int = 0) -> LLMConfig:
        where = f"llms[{position}]"
        if not isinstance(d, Mapping):
            raise LLMConfigError(f"{where}: expected a mapping with at least 'name' and 'kind', got {d!r}")
        if isinstance(d.get("name"), str):
            where += f" ({d['name']!r})"
        try:
            entry = LLMEntry.model_validate(dict(d))
        except ValidationError as e:
            raise LLMConfigError(f"{where}: " + "; ".join(problems(e, LLMEntry))) from None
        prompt = entry.prompt.model_dump(exclude_unset=True)
        few_shot = entry.few_shot
        options = dict(entry.model_extra or {})
        if entry.kind == "packaged" and isinstance(options.get("model"), str):
            from ls_backend.llms.packaged import PACKAGED_MODELS

            if options["model"] in PACKAGED_MODELS:  # an unknown name is reported when the LLM is built
                prompt = {**PACKAGED_MODELS[options["model"]].prompt, **prompt}
                few_shot = PACKAGED_MODELS[options["model"]].few_shot if few_shot is None else few_shot
        try:  # validate the overrides now, not at the first item
            PromptTemplate.from_dict({"question": "q", "classes": ["a", "b"], **prompt})
        except PromptError as e:
            raise LLMConfigError(f"{where}: {e}") from None
        cost = CostModel.from_dict(entry.cost)
        return cls(entry.name, entry.kind, options, prompt, cost, few_shot or 0)

    def prompt_for(self, task: TaskSpec, examples: Sequence[tuple[str, str]] | None = None) -> PromptTemplate:
        """The task's prompt with this LLM's overrides and few-shot examples (default: ``few_shot`` per class of
        the task's own examples)."""
        if examples is None:
            examples = select_examples(task.examples, task.classes, self.few_shot)
        return PromptTemplate.from_task(task, examples=tuple(tuple(e) for e in examples), **self.prompt)

    def accepted_options(self) -> list[str] | None:
        """Keyword arguments the kind's factory takes (None: it takes any)."""
        spec = KINDS[self.kind]
        accepted, open_ended = _parameters(_resolve(spec.factory))
        if open_ended and spec.forwards_to:
            forwarded, open_ended = _parameters(_resolve(spec.forwards_to))
            accepted |= forwarded
        return None if open_ended else sorted(accepted - set(_SUPPLIED))

    def build(self) -> LLM:
        """Construct (load) the LLM; unknown options are an error naming the accepted ones."""
        accepted = self.accepted_options()
        if accepted is not None:
            unknown = set(self.options) - set(accepted)
            if unknown:
                raise LLMConfigError(
                    f"LLM {self.name!r} (kind {self.kind}): unknown field(s) {sorted(unknown)}; "
                    f"accepted: {accepted} plus {list(RESERVED)}"
                )
        factory = _resolve(KINDS[self.kind].factory)
        return factory(name=self.name, cost_model=self.cost, **self.options)


def select_examples(
    examples: Sequence[tuple[str, str]], classes: Sequence[str], per_class: int
) -> tuple[tuple[str, str], ...]:
    """Up to ``per_class`` examples of each class, keeping the given order."""
    taken = dict.fromkeys(classes, 0)
    chosen = []
    for text, label in examples:
        if taken.get(label, per_class) < per_class:
            taken[label] += 1
            chosen.append((text, label))
    return tuple(chosen)


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def parse_llm_configs(config: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[LLMConfig]:
    """Validate a config (``{"llms": [...]}`` or the list itself) into entries, in the given (cost) order."""
    entries = config.get("llms") if isinstance(config, Mapping) else config
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise LLMConfigError("LLM config: expected a non-empty list under 'llms'")
    if isinstance(config, Mapping) and set(config) - {"llms"}:
        raise LLMConfigError(f"LLM config: unknown top-level field(s) {sorted(set(config) - {'llms'})}")
    parsed = [LLMConfig.from_dict(entry, i) for i, entry in enumerate(entries)]
    names = [c.name for c in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LLMConfigError(f"LLM config: names must be unique; repeated: {duplicates}")
    return parsed


def load_llm_configs(path: str | Path) -> list[LLMConfig]:
    """Read and validate an LLM config file (YAML, or JSON by its ``.json`` suffix)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LLM config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    try:
        return parse_llm_configs(data)
    except LLMConfigError as e:
        raise LLMConfigError(f"{path}: {e}") from None


def predicted_precision(kind: str, options: Mapping[str, Any]) -> str | None:
    """The precision an ``hf`` or ``packaged`` LLM entry will load in on this machine, without loading it (None
    for other kinds): the server's prediction of an LLM's revision uses it."""
    device = str(options.get("device", "cpu"))
    if kind == "packaged" and isinstance(options.get("model"), str):
        from ls_backend.llms.packaged import DEFAULT_DTYPE, PACKAGED_MODELS, packaged_precision

        if options["model"] not in PACKAGED_MODELS:
            return None
        return packaged_precision(options["model"], device, str(options.get("dtype", DEFAULT_DTYPE)))
    if kind == "hf":
        from ls_backend.llms.hf import DEFAULT_AUTO_DTYPES, resolve_precision

        auto_dtypes = options.get("auto_dtypes", DEFAULT_AUTO_DTYPES)
        return resolve_precision(str(options.get("dtype", "float32")), device, tuple(auto_dtypes))
    return None


def build_llms(config: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[LLM]:
    """Build every LLM of a config (a path, a dict or a list of entries), in its order."""
    entries = load_llm_configs(config) if isinstance(config, str | Path) else parse_llm_configs(config)
    return [entry.build() for entry in entries]
