"""Who may set which configuration key: the trust boundary between the server's own file and a project's
``extra_params`` (pure: no I/O).

The server's config file may set every key. A project's ``extra_params`` are untrusted input: anyone who may edit
the project in Label Studio sets them, and without basic auth anyone who reaches ``/setup``. A project may only
*choose among* what the server allows: each key it may set has a :class:`Rule` (a choice, a flag, a bounded
number, a short text, names of the server's LLMs), and every other key is refused, so an environment variable
name, a URL, a file path or a model id never comes from a project. A rule may bound a value by the server's own
(``at_most_server``): a project may lower a resource limit, never raise it.

:func:`check_project_settings` walks ``extra_params`` and returns every problem it finds; the configuration
(``ls_backend/server/config.py``) holds the table of rules (``PROJECT_SETTINGS``) and of server-only keys
(``SERVER_SETTINGS``), and docs/server.md shows both.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SECTIONS = ("prompt", "cascade", "loop", "limits")
"""Top-level keys whose value is a mapping of settings (their keys are named ``section.key``)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


class Rule(ABC):
    """What a project may set one key to. ``check`` returns the problem (None: allowed); ``server`` is the
    server's own effective value of the key (for rules bounded by it)."""

    nullable: bool = False

    def check(self, value: Any, server: Any) -> str | None:
        if value is None:
            return None if self.nullable else "may not be null"
        return self._check(value, server)

    @abstractmethod
    def _check(self, value: Any, server: Any) -> str | None:
        """The problem with a non-null ``value`` (None: allowed)."""

    @abstractmethod
    def describe(self) -> str:
        """What the rule allows, as docs/server.md's table says it."""


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed list of values."""

    values: tuple[Any, ...]
    nullable: bool = False

    def _check(self, value: Any, server: Any) -> str | None:
        if isinstance(value, bool) or value not in self.values:
            return f"must be one of {list(self.values)}, got {_short(value)}"
        return None

    def describe(self) -> str:
        return " \\| ".join(f"`{v}`" for v in self.values)


@dataclass(frozen=True)
class Flag(Rule):
    """true or false."""

    def _check(self, value: Any, server: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, got {_short(value)}"

    def describe(self) -> str:
        return "true \\| false"


@dataclass(frozen=True)
class Number(Rule):
    """A finite number in ``[low, high]`` (open ends where asked); with ``at_most_server``, also at most the
    server's own value (when the server sets one)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    at_most_server: bool = False
    nullable: bool = False
    integer: bool = False

    def check(self, value: Any, server: Any) -> str | None:
        if value is None and self.at_most_server and server is not None:
            return f"may not be null (no limit): the server's limit is {server}"
        return super().check(value, server)

    def _check(self, value: Any, server: Any) -> str | None:
        kind = "an integer" if self.integer else "a number"
        if not _is_number(value) or (self.integer and not isinstance(value, int)):
            return f"must be {kind}, got {_short(value)}"
        below = value <= self.low if self.low_open else value < self.low
        above = value >= self.high if self.high_open else value > self.high
        if below or above:
            return f"must be {kind} in {self._interval()}, got {_short(value)}"
        if self.at_most_server and _is_number(server) and value > server:
            return f"must be at most the server's {server} (a project may lower a limit, not raise it), got {value}"
        return None

    def _interval(self) -> str:
        def bound(x: float) -> str:
            if math.isinf(x):
                return "inf" if x > 0 else "-inf"
            return str(int(x)) if self.integer else f"{x:g}"

        low, high = bound(self.low), bound(self.high)
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def describe(self) -> str:
        text = ("integer " if self.integer else "number ") + self._interval()
        if self.at_most_server:
            text += ", at most the server's"
            return text + (", or null if the server's is null" if self.nullable else "")
        return text + (", or null" if self.nullable else "")


@dataclass(frozen=True)
class Integer(Number):
    """An integer in ``[low, high]`` (see :class:`Number`)."""

    low: float = 0
    integer: bool = True


@dataclass(frozen=True)
class Text(Rule):
    """A string of at most ``max_chars`` characters (not blank)."""

    max_chars: int
    nullable: bool = False

    def _check(self, value: Any, server: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return f"must be a non-empty string, got {_short(value)}"
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters, got {len(value)}"
        return None

    def describe(self) -> str:
        return f"text, at most {self.max_chars} characters" + (", or null" if self.nullable else "")


@dataclass(frozen=True)
class Examples(Rule):
    """A list of at most ``max_items`` ``[text, class]`` pairs of strings, each text at most ``max_chars``."""

    max_items: int
    max_chars: int

    def _check(self, value: Any, server: Any) -> str | None:
        if not isinstance(value, list) or len(value) > self.max_items:
            return f"must be a list of at most {self.max_items} [text, class] pairs"
        for i, pair in enumerate(value):
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(part, str) and len(part) <= self.max_chars for part in pair)
            ):
                return (
                    f"item {i} must be a [text, class] pair of strings of at most {self.max_chars} characters"
                )
        return None

    def describe(self) -> str:
        return f"at most {self.max_items} [text, class] pairs"


@dataclass(frozen=True)
class LLMNames(Rule):
    """A non-empty list of distinct names of the LLMs the server's config defines (the cascade, in this order);
    the server value is the list of names it offers."""

    def _check(self, value: Any, server: Any) -> str | None:
        offered = list(server or [])
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            return (
                f"must be a list of the names of LLMs this server offers ({offered}); a project picks LLMs, "
                "the server's config defines them"
            )
        unknown = [v for v in value if v not in offered]
        if unknown:
            return f"names LLMs this server does not offer: {unknown}; it offers {offered}"
        if len(set(value)) != len(value):
            return f"names an LLM twice: {value}"
        return None

    def describe(self) -> str:
        return "names of the server's LLMs"


def setting_paths(extra: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The ``(path, value)`` pairs a mapping of settings sets (``section.key`` inside sections), and the problems
    of its shape (a section that is not a mapping)."""
    pairs: list[tuple[str, Any]] = []
    problems: list[str] = []
    for key, value in extra.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                problems.append(f"{key!r} must be a mapping, got {_short(value)}")
                continue
            pairs += [(f"{key}.{sub}", v) for sub, v in value.items()]
        else:
            pairs.append((str(key), value))
    return pairs, problems


def check_project_settings(
    extra: Mapping[str, Any],
    rules: Mapping[str, Rule],
    server_only: Mapping[str, str],
    server_value: Callable[[str], Any],
) -> list[str]:
    """Every problem of a project's ``extra_params``: keys only the server's file may set (``server_only``: path
    -> why), keys no one may set, values outside their rule. Empty when the project may set all of it."""
    pairs, problems = setting_paths(extra)
    for path, value in pairs:
        rule = rules.get(path)
        if rule is None:
            why = server_only.get(path) or server_only.get(path.split(".", 1)[0])
            if why is not None:
                problems.append(
                    f"{path!r} may only be set in the server's config file, not per project ({why})"
                )
            else:
                problems.append(f"unknown key {path!r}; a project may set {sorted(rules)}")
            continue
        problem = rule.check(value, server_value(path))
        if problem is not None:
            problems.append(f"{path} {problem}")
    return problems


def describe_rules(rules: Mapping[str, Rule], server_only: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(key, who may set it, what a project may set it to)`` for every key, in path order (the table of
    docs/server.md)."""
    rows = [(path, "server file, project", rule.describe()) for path, rule in rules.items()]
    rows += [(path, "server file only", why) for path, why in server_only.items()]
    return sorted(rows, key=lambda row: (row[0].split(".")[0] in SECTIONS, row[0]))


def offered_names(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names of the server's LLM entries (entries without a string name are the config's problem)."""
    return [str(e["name"]) for e in entries if isinstance(e, Mapping) and isinstance(e.get("name"), str)]
