"""Typed settings (pydantic v2) that say what is wrong in words: the base of every configuration model.

A settings model is strict (``1.0`` is no integer, ``"1"`` no number, ``true`` neither), refuses unknown keys and
is immutable. Its fields' types say what they accept, with ``annotated_types`` bounds (``Annotated[int, Ge(1)]``),
``Literal`` choices, :data:`Real` for finite numbers, or a :class:`Says` phrase where words say it better
(``Says("a path (a non-empty string)")``). :func:`describe` puts a type into words, and :func:`problems` turns a
``ValidationError`` into one sentence per bad key that says what the key must be and what it got::

    cascade.n_bins must be an integer in [1, 20], got 25
    unknown key 'cascade.thresholds'; cascade has ['calibrator', 'n_bins', ...]

Validators that know better say so themselves (a ``ValueError`` keeps its message). docs/server.md's table of
keys is written with the same words (:func:`ls_backend.server.trust.describe_rules`).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

__all__ = [
    "ListAsTuple",
    "NonBlank",
    "Real",
    "Says",
    "Settings",
    "SettingsError",
    "describe",
    "field_annotation",
    "problems",
    "short",
    "unset",
]


class Settings(BaseModel):
    """Base of the configuration models: strict types, no unknown keys, immutable."""

    # protected_namespaces: the config has a key model_dir (pydantic before 2.10 reserved model_*)
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, protected_namespaces=())


class SettingsError(ValueError):
    """Settings that are missing something, of the wrong type, out of range or unknown."""


@dataclass(frozen=True)
class Says:
    """What a field accepts, in words, where its type alone would say it less well."""

    text: str


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


Real = Annotated[int | float, AfterValidator(_finite)]
"""A finite number, kept as given (an integer stays one, so a fingerprint of the settings does not change)."""


def _not_blank(text: str) -> bool:
    return bool(text.strip())


NonBlank = Annotated[str, annotated_types.Predicate(_not_blank)]
"""A string with something else than white space (kept as given)."""


def unset() -> Any:
    """The default of a key whose absence means something no value says (the prompt's own default, another key's
    value): ``model_dump(exclude_unset=True)`` leaves it out, and since pydantic does not validate defaults, an
    explicit null is still refused by the key's type."""
    return Field(default=None)


def _list_as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


ListAsTuple = BeforeValidator(_list_as_tuple)
"""Lets a JSON/YAML list stand for a tuple (strict validation takes only tuples)."""


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


# ---- putting a type into words


def _flatten(annotation: Any) -> tuple[Any, list[Any]]:
    """The bare type under ``Annotated`` and every metadata item (a ``Field(...)``'s constraints included)."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata = [*extra, *metadata]
    flat: list[Any] = []
    for item in metadata:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, flat


def _bounds(metadata: Iterable[Any]) -> tuple[float, bool, float, bool]:
    """The tightest ``(low, low_open, high, high_open)`` that the metadata's annotated_types bounds allow."""
    low, low_open, high, high_open = -math.inf, False, math.inf, False
    for item in metadata:
        for name in ("gt", "ge", "lt", "le"):
            value = getattr(item, name, None)
            if value is None:
                continue
            if name in ("gt", "ge") and (value > low or (value == low and name == "gt")):
                low, low_open = value, name == "gt"
            if name in ("lt", "le") and (value < high or (value == high and name == "lt")):
                high, high_open = value, name == "lt"
    return low, low_open, high, high_open


def _number_words(kind: str, metadata: list[Any]) -> str:
    """ "an integer in [1, 20]", "a finite number >= 0", "a number in (0, 1]" (``kind``: integer or number)."""
    low, low_open, high, high_open = _bounds(metadata)

    def show(x: float) -> str:
        return str(int(x)) if kind == "integer" and float(x).is_integer() else f"{x:g}"

    noun = "an integer" if kind == "integer" else "a number"
    if math.isinf(low) or math.isinf(high):
        noun = (
            "an integer" if kind == "integer" else "a finite number"
        )  # "in [0, inf)" would hide that inf is refused
        below = f" {'>' if low_open else '>='} {show(low)}" if not math.isinf(low) else ""
        above = f" {'<' if high_open else '<='} {show(high)}" if not math.isinf(high) else ""
        return noun + below + above
    return f"{noun} in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"


def describe(annotation: Any, markdown: bool = False) -> str:
    """What a settings type accepts, in words: "an integer in [1, 20]", "true or false", "one of ['ST', 'SV']"
    (markdown: "one of `ST`, `SV`"), "a non-empty string of at most 2000 characters", "... or null"."""
    base, metadata = _flatten(annotation)
    said = [item.text for item in metadata if isinstance(item, Says)]
    if said:
        return said[0]
    origin = get_origin(base)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(base) if a is not type(None)]
        if len(options) < len(get_args(base)):
            inner = options[0] if len(options) == 1 else typing.Union[tuple(options)]  # noqa: UP007
            return f"{describe(Annotated[inner, *metadata] if metadata else inner, markdown)} or null"
        if set(options) == {int, float}:
            return _number_words("number", metadata)
    if origin is Literal:
        values = get_args(base)
        shown = ", ".join(f"`{v}`" for v in values) if markdown else repr(list(values))
        return f"one of {shown}"
    if base is bool:
        return "true or false"
    if base is int:
        return _number_words("integer", metadata)
    if base is float:
        return _number_words("number", metadata)
    if base is str:
        blank_refused = any(getattr(m, "func", None) is _not_blank for m in metadata)
        longest = min((m.max_length for m in metadata if getattr(m, "max_length", None)), default=None)
        text = "a non-empty string" if blank_refused else "a string"
        return text + (f" of at most {longest} characters" if longest else "")
    if isinstance(base, type) and issubclass(base, BaseModel):
        return "a mapping"
    if origin in (list, tuple, Sequence) or base in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or base is dict:
        return "a mapping"
    return f"a {getattr(base, '__name__', base)}"


# ---- ValidationError -> sentences


def field_annotation(model: type[BaseModel], name: str) -> Any:
    """A field's whole type, its constraints included (``Annotated[int, Ge(1)]``), as :func:`describe` takes it."""
    field = model.model_fields[name]
    return Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation


def _key_of(model: type[BaseModel], key: str) -> str | None:
    """The field of ``model`` that input key ``key`` fills (its name, or the field whose alias it is)."""
    for name, field in model.model_fields.items():
        if (field.alias or name) == key:
            return name
    return None


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    base, _ = _flatten(annotation)
    if get_origin(base) in (typing.Union, types.UnionType):
        models = [a for a in get_args(base) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else None
    return base if isinstance(base, type) and issubclass(base, BaseModel) else None


def _walk(model: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], type[BaseModel], str | None]:
    """The input keys of ``loc`` that name fields (sections, then a key), the model that holds the last one, and
    that field's name (None: ``loc`` names no field of it, e.g. an unknown key)."""
    keys: list[str] = []
    owner, name = model, None
    for part in loc:
        if name is not None:
            nested = _nested_model(owner.model_fields[name].annotation)
            if nested is None:
                break  # inside a list, a union branch, ...: the field is the last one named
            owner = nested
        if not isinstance(part, str):
            break
        keys.append(part)
        name = _key_of(owner, part)
        if name is None:
            break
    return keys, owner, name


def problems(
    error: ValidationError, model: type[BaseModel], unknown: Callable[[str], str] | None = None
) -> list[str]:
    """One sentence per bad key of ``error`` (raised by validating ``model``): what the key must be and what it
    got, a validator's own message, or (``unknown``: path -> sentence) why a key is unknown. Keys are shown as
    dotted paths (``cascade.n_bins``)."""
    found: dict[str, str] = {}
    for item in error.errors():
        keys, owner, name = _walk(model, item["loc"])
        path = ".".join(keys)
        if path in found:
            continue  # one sentence per key (a union reports each of its branches)
        if item["type"] == "value_error":
            found[path] = _joined(path, str(item["ctx"]["error"]))
        elif item["type"] == "extra_forbidden" or name is None:
            if unknown is not None:
                found[path] = unknown(path)
            else:
                known = [f.alias or n for n, f in owner.model_fields.items()]
                found[path] = f"unknown key {path!r}; {'.'.join(keys[:-1]) or 'the top level'} has {known}"
        elif item["type"] == "missing":
            found[path] = f"missing key {path!r}: it must be {describe(field_annotation(owner, name))}"
        else:
            words = describe(field_annotation(owner, name))
            inside = "".join(f"[{part}]" for part in item["loc"][len(keys) :] if isinstance(part, int))
            got = (
                f"; got {short(item['input'])} at {path}{inside}"
                if inside
                else f", got {short(item['input'])}"
            )
            found[path] = f"{path} must be {words}{got}"
    return list(found.values())


def _joined(path: str, message: str) -> str:
    """A validator's message about the key at ``path``, said once: "n_bins must ...", "llms: names ..."."""
    if not path or message.startswith(path):
        return message
    return f"{path} {message}" if message.startswith(("must ", "may ")) else f"{path}: {message}"
