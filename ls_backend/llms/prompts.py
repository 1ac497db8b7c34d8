"""Prompt templates: the question, the classes and how a text is put to an LLM, as validated data.

A template has three placeholders: ``{question}``, ``{text}`` (required) and ``{classes}`` (the class names
joined by ", "). Literal braces are written ``{{`` and ``}}``. The default template ends in an ``Answer:`` cue,
so the LLM's next token is its answer.

Plain rendering (base models) puts few-shot examples first, each rendered with the same template and followed by
its class, separated by blank lines; an optional ``system`` text goes before them. The ``system`` text may hold
``{question}`` and ``{classes}`` too (not ``{text}``), so an instruction can name the classes once, or a base
model's prompt can state the question once above compact examples (a template without ``{question}``). Chat rendering (instruct
models; ``chat=True``) gives a message list instead: the system message, one user/assistant turn per example and
the user message of the item; the adapter applies the tokenizer's chat template to it.

Texts longer than ``max_text_chars`` characters are truncated: their beginning is kept and ``" ..."`` appended,
so the prompt stays bounded and its answer cue is never cut.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ls_backend.tasks import TaskSpec

DEFAULT_TEMPLATE = "{question}\n\nText: {text}\n\nAnswer with one of: {classes}.\nAnswer:"
PLACEHOLDERS = frozenset({"question", "text", "classes"})
SYSTEM_PLACEHOLDERS = frozenset({"question", "classes"})
TRUNCATION_MARK = " ..."
_FIELDS = ("question", "classes", "template", "examples", "chat", "system", "max_text_chars")


class PromptError(ValueError):
    """A prompt template that cannot be rendered or contradicts its classes."""


def _template_fields(
    template: str, allowed: frozenset[str] = PLACEHOLDERS, what: str = "template"
) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise PromptError(
            f"prompt {what} is malformed ({e}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    names = []
    for _, field_name, format_spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name == "":
            raise PromptError(
                f"prompt {what} has an empty placeholder '{{}}'; use "
                f"{' or '.join(sorted('{' + p + '}' for p in allowed))}"
            )
        if field_name not in allowed:
            raise PromptError(
                f"prompt {what} has unknown placeholder {{{field_name}}}; allowed: "
                f"{sorted('{' + p + '}' for p in allowed)}"
            )
        if format_spec or conversion:
            raise PromptError(
                f"prompt {what} placeholder {{{field_name}}} must not have a format spec or '!'"
            )
        names.append(field_name)
    return names


@dataclass(frozen=True)
class PromptTemplate:
    """How a classification question about one text is put to an LLM (see the module docstring)."""

    question: str
    classes: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    examples: tuple[tuple[str, str], ...] = ()
    chat: bool = False
    system: str | None = None
    max_text_chars: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise PromptError("prompt: 'question' must be a non-empty string")
        if isinstance(self.classes, str) or not isinstance(self.classes, tuple | list):
            raise PromptError(f"prompt: 'classes' must be a list of class names, got {self.classes!r}")
        classes = tuple(self.classes)
        if len(classes) < 2 or any(not isinstance(c, str) or not c.strip() for c in classes):
            raise PromptError(f"prompt: needs at least 2 non-empty class names, got {list(classes)}")
        if len(set(classes)) != len(classes):
            raise PromptError(f"prompt: class names must be distinct, got {list(classes)}")
        object.__setattr__(self, "classes", classes)
        if not isinstance(self.template, str):
            raise PromptError(f"prompt: 'template' must be a string, got {type(self.template).__name__}")
        if "text" not in _template_fields(self.template):
            raise PromptError("prompt template must contain the {text} placeholder")
        examples = []
        for i, example in enumerate(self.examples):
            if not isinstance(example, tuple | list) or len(example) != 2:
                raise PromptError(f"prompt: example {i} must be a (text, class) pair, got {example!r}")
            text, cls = example
            if not isinstance(text, str) or not isinstance(cls, str):
                raise PromptError(
                    f"prompt: example {i} must be a (text, class) pair of strings, got {example!r}"
                )
            if cls not in classes:
                raise PromptError(
                    f"prompt: example {i} has class {cls!r}, which is not one of {list(classes)}"
                )
            examples.append((text, cls))
        object.__setattr__(self, "examples", tuple(examples))
        if not isinstance(self.chat, bool):
            raise PromptError(f"prompt: 'chat' must be true or false, got {self.chat!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise PromptError(f"prompt: 'system' must be a string or null, got {self.system!r}")
        if self.system:
            _template_fields(self.system, SYSTEM_PLACEHOLDERS, "system text")
        if (
            isinstance(self.max_text_chars, bool)
            or not isinstance(self.max_text_chars, int)
            or self.max_text_chars < 1
        ):
            raise PromptError(
                f"prompt: 'max_text_chars' must be a positive integer, got {self.max_text_chars!r}"
            )

    # rendering -------------------------------------------------------------------------------------------
    def truncate(self, text: str) -> str:
        """The text cut to ``max_text_chars`` characters (its beginning kept, ``" ..."`` appended)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt: texts must be strings, got {type(text).__name__}")
        if len(text) <= self.max_text_chars:
            return text
        return text[: self.max_text_chars] + TRUNCATION_MARK

    def render_item(self, text: str) -> str:
        """The template filled in for one text, without examples or system text."""
        return self.template.format(
            question=self.question, text=self.truncate(text), classes=", ".join(self.classes)
        )

    def render_system(self) -> str | None:
        """The system text with ``{question}`` and ``{classes}`` filled in (None: no system text)."""
        if not self.system:
            return None
        return self.system.format(question=self.question, classes=", ".join(self.classes))

    def render_plain(self, text: str) -> str:
        """The full plain-text prompt: system text, few-shot examples with their classes, then the item."""
        system = self.render_system()
        parts = [system] if system else []
        parts += [f"{self.render_item(ex_text)} {ex_class}" for ex_text, ex_class in self.examples]
        parts.append(self.render_item(text))
        return "\n\n".join(parts)

    def render_messages(self, text: str) -> list[dict[str, str]]:
        """The prompt as chat messages: system, one user/assistant turn per example, then the item."""
        system = self.render_system()
        messages = [{"role": "system", "content": system}] if system else []
        for ex_text, ex_class in self.examples:
            messages.append({"role": "user", "content": self.render_item(ex_text)})
            messages.append({"role": "assistant", "content": ex_class})
        messages.append({"role": "user", "content": self.render_item(text)})
        return messages

    # data ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "classes": list(self.classes),
            "template": self.template,
            "examples": [list(e) for e in self.examples],
            "chat": self.chat,
            "system": self.system,
            "max_text_chars": self.max_text_chars,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptTemplate:
        if not isinstance(d, Mapping):
            raise PromptError(f"prompt: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise PromptError(f"prompt: unknown field(s) {sorted(unknown)}; allowed: {list(_FIELDS)}")
        missing = [f for f in ("question", "classes") if f not in d]
        if missing:
            raise PromptError(f"prompt: missing field(s) {missing}")
        return cls(**_normalise(d))

    @classmethod
    def from_task(cls, task: TaskSpec, **overrides: Any) -> PromptTemplate:
        """The task's question and classes with any other field overridden (e.g. ``chat=True``)."""
        unknown = set(overrides) - set(_FIELDS)
        if unknown:
            raise PromptError(
                f"prompt overrides: unknown field(s) {sorted(unknown)}; allowed: {list(_FIELDS)}"
            )
        fields: dict[str, Any] = {"question": task.question, "classes": task.classes, **overrides}
        return cls(**_normalise(fields))

    def replace(self, **changes: Any) -> PromptTemplate:
        """A copy with some fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})

    def hash(self) -> str:
        """Stable sha256 (hex) of the template's data; part of the score cache key."""
        payload = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _normalise(d: Mapping[str, Any]) -> dict[str, Any]:
    """Lists from JSON/YAML into the tuples the frozen dataclass holds."""
    out = dict(d)
    if isinstance(out.get("classes"), list):
        out["classes"] = tuple(out["classes"])
    if "examples" in out:
        examples = out["examples"] or ()
        if isinstance(examples, str | Mapping) or not isinstance(examples, list | tuple):
            raise PromptError(f"prompt: 'examples' must be a list of [text, class] pairs, got {examples!r}")
        out["examples"] = tuple(tuple(e) if isinstance(e, list | tuple) else e for e in examples)
    return out
