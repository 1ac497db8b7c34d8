"""Who may set which configuration key: the trust boundary between the server's own file and a project's
``extra_params`` (pure: no I/O).

The server's config file may set every key of the configuration models (``ls_backend/server/config.py``). A
project's ``extra_params`` are untrusted input: anyone who may edit the project in Label Studio sets them, and
without basic auth anyone who reaches ``/setup``. A project may only *choose among* what the server allows: each
key it may set has a :class:`Project` rule, which narrows the key's own type (a cap on a number, a shorter text,
fewer choices, names of the server's LLMs instead of LLM entries), and every other key is refused, so an
environment variable name, a URL, a file path or a model id never comes from a project. A rule may bound a value
by the server's own (``at_most_server``): a project may lower a resource limit, never raise it.

:func:`project_model` derives, from the configuration model and the table of rules, the pydantic model that a
project's ``extra_params`` are validated with (every key optional, unknown keys refused);
:func:`check_project_settings` returns every problem it finds, and :func:`describe_rules` writes docs/server.md's
table from the same models and rules.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Interval, MaxLen
from pydantic import AfterValidator, BaseModel, ValidationError, ValidationInfo, create_model

from ls_backend.settings import Says, Settings, describe, field_annotation, problems

ServerValue = Callable[[str], Any]
"""The server's own effective value of a setting (``section.key``); the rules bounded by it ask it."""


def _optional_parts(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(annotation, False)``."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1 and len(options) < len(get_args(annotation)):
            return options[0], True
    return annotation, False


def _at_most_server(path: str) -> Callable[[Any, ValidationInfo], Any]:
    def check(value: Any, info: ValidationInfo) -> Any:
        server = info.context["server_value"](path) if info.context else None
        if value is None and server is not None:
            raise ValueError(f"may not be null (no limit) while the server's limit is {server}")
        if value is not None and server is not None and value > server:
            raise ValueError(
                f"must be at most the server's {server} (a project may lower a limit, not raise it), got {value}"
            )
        return value

    return check


@dataclass(frozen=True)
class Project:
    """A key a project may set: its type in the configuration model, narrowed by this rule.

    Attributes:
        ge, gt, le, lt: bounds on top of the type's own (``le=20``: at most 20).
        max_length: the longest text.
        choices: the values a project may choose among (a subset of what the server may set).
        type: a type of its own instead of the key's (``llms``: names rather than entries).
        at_most_server: at most the server's own value (and not null when the server's is not).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] | None = None
    type: Any = None
    at_most_server: bool = False

    def annotation(self, server_annotation: Any, path: str) -> Any:
        """The type a project's value of ``path`` must have (null where the server's type allows it)."""
        inner, nullable = _optional_parts(server_annotation)
        if self.type is not None:
            inner = self.type
        if self.choices is not None:
            inner = Literal[self.choices]
        bounds = {
            k: v
            for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt))
            if v is not None
        }
        if bounds:
            inner = Annotated[inner, Interval(**bounds)]
        if self.max_length is not None:
            inner = Annotated[inner, MaxLen(self.max_length)]
        narrowed = typing.Optional[inner] if nullable else inner  # noqa: UP045 - inner is a value here
        if self.at_most_server:
            narrowed = Annotated[narrowed, AfterValidator(_at_most_server(path))]
        return narrowed

    def describe(self, server_annotation: Any, path: str) -> str:
        """What a project may set the key to, as docs/server.md's table says it."""
        text = describe(self.annotation(server_annotation, path), markdown=True)
        if self.at_most_server:
            text = text.removesuffix(" or null") + ", at most the server's"
            if _optional_parts(server_annotation)[1]:
                text += ", or null if the server's is null"
        return text


def sections(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The keys of ``model`` whose value is a mapping of settings (a settings model), by input key."""
    found = {}
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found[field.alias or name] = field.annotation
    return found


def setting_annotations(model: type[BaseModel]) -> dict[str, Any]:
    """Every setting of ``model`` by path (``question``, ``cascade.n_bins``, ...) with its whole type."""
    found: dict[str, Any] = {}
    nested = sections(model)
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in nested:
            owner = nested[key]
            found |= {f"{key}.{n}": field_annotation(owner, n) for n in owner.model_fields}
        else:
            found[key] = field_annotation(model, name)
    return found


class ProjectSettings(Settings):
    """Base of the derived model of what a project may set."""


def project_model(model: type[BaseModel], rules: Mapping[str, Project]) -> type[BaseModel]:
    """The pydantic model of a project's ``extra_params``: the keys of ``rules`` (``section.key`` inside a
    section), each optional (unset: the server's value) and of its rule's type; any other key is refused.
    Validate with ``context={"server_value": ...}`` for the rules bounded by the server's values."""
    annotations = setting_annotations(model)
    by_section: dict[str, dict[str, Any]] = {}
    for path, rule in rules.items():
        if path not in annotations:
            raise KeyError(f"the project rule {path!r} names no setting of {model.__name__}")
        section, _, key = path.rpartition(".")
        # default None: pydantic does not validate defaults, so an unset key stays unset and an explicit null
        # is checked against the type (null only where the server's type allows it)
        by_section.setdefault(section, {})[key] = (rule.annotation(annotations[path], path), None)
    top = by_section.pop("", {})
    for section, fields in by_section.items():
        owner = sections(model)[section]
        top[section] = (create_model(f"Project{owner.__name__}", __base__=ProjectSettings, **fields), None)
    return create_model(f"Project{model.__name__}", __base__=ProjectSettings, **top)


def check_project_settings(
    extra: Mapping[str, Any],
    project: type[BaseModel],
    rules: Mapping[str, Project],
    server_only: Mapping[str, str],
    server_value: ServerValue,
) -> list[str]:
    """Every problem of a project's ``extra_params`` (validated with ``project``, from :func:`project_model`):
    keys only the server's file may set (``server_only``: path or section -> why), keys no one may set, values
    outside their rule. Empty when the project may set all of it."""

    def unknown(path: str) -> str:
        why = server_only.get(path) or server_only.get(path.split(".", 1)[0])
        if why is not None:
            return f"{path!r} may only be set in the server's config file, not per project ({why})"
        return f"unknown key {path!r}; a project may set {sorted(rules)}"

    try:
        project.model_validate(extra, context={"server_value": server_value})
    except ValidationError as error:
        return problems(error, project, unknown)
    return []


def describe_rules(
    model: type[BaseModel], rules: Mapping[str, Project], server_only: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """``(key, who may set it, what a project may set it to or why only the server)`` for every setting of
    ``model``, in the models' order, top-level keys first (the table of docs/server.md). A setting in neither
    ``rules`` nor ``server_only`` (nor under a section of it) is a KeyError: every setting says who may set it."""
    rows = []
    for path, annotation in setting_annotations(model).items():
        if path in rules:
            rows.append((path, "server file, project", rules[path].describe(annotation, path)))
            continue
        why = server_only.get(path) or server_only.get(path.split(".", 1)[0])
        if why is None:
            raise KeyError(f"setting {path!r} is in neither the project rules nor the server-only settings")
        rows.append((path, "server file only", why))
    return sorted(rows, key=lambda row: "." in row[0])  # stable: the models' order within each group


def _offered_llm_names(value: Any, info: ValidationInfo) -> Any:
    offered = list(info.context["server_value"]("llms") if info.context else [])
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"must be a list of the names of LLMs this server offers ({offered}); a project picks LLMs, "
            "the server's config defines them"
        )
    unknown = [v for v in value if v not in offered]
    if unknown:
        raise ValueError(f"names LLMs this server does not offer: {unknown}; it offers {offered}")
    if len(set(value)) != len(value):
        raise ValueError(f"names an LLM twice: {value}")
    return value


LLMNames = Annotated[
    Any,
    Says(
        "names of the server's LLMs, each once (the cascade, in that order); the LLM entries (`kind`, `model`, "
        "`base_url`, `api_key_env`, ...) hold URLs, credential variables and paths: only the server file has them"
    ),
    AfterValidator(_offered_llm_names),
]
"""A project's ``llms``: distinct names of LLMs the server's config defines (its server value: the names offered)."""


def offered_names(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names of the server's LLM entries (entries without a string name are the config's problem)."""
    return [str(e["name"]) for e in entries if isinstance(e, Mapping) and isinstance(e.get("name"), str)]
