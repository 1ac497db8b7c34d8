"""What a Label Studio project asks for: the text input and the classes, read from its labeling config.

The labeling config is parsed with label-studio-sdk's :class:`LabelInterface` (the same parser Label Studio
uses), never by hand. The backend labels text classification projects: exactly one ``<Choices>`` control that
points at exactly one ``<Text>`` object whose value names a task data key (``value="$text"`` -> ``text``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

logger = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """A labeling config this backend cannot label (no or several Choices/Text pairs, dynamic choices...)."""


@dataclass(frozen=True)
class LabelSpec:
    """The one classification question of a labeling config.

    Attributes:
        from_name: the ``<Choices>`` control's name (``from_name`` of every result).
        to_name: the ``<Text>`` object's name (``to_name`` of every result).
        data_key: the task data key holding the text (``$text`` -> ``text``).
        choices: the values a result may carry, in config order (a Choice's ``alias`` when it has one).
        class_words: the words put to an LLM for each choice (the Choice's ``value``), aligned with ``choices``.
        multiple: whether the control allows several choices (``choice="multiple"``); the backend answers one.
    """

    from_name: str
    to_name: str
    data_key: str
    choices: tuple[str, ...]
    class_words: tuple[str, ...]
    multiple: bool = False

    def result(self, choice: str) -> list[dict[str, object]]:
        """The Label Studio ``result`` list that selects ``choice``."""
        if choice not in self.choices:
            raise ValueError(f"choice {choice!r} is not one of the config's choices {list(self.choices)}")
        return [
            {
                "from_name": self.from_name,
                "to_name": self.to_name,
                "type": "choices",
                "value": {"choices": [choice]},
            }
        ]


@lru_cache(maxsize=256)
def parse_label_config(label_config: str) -> LabelSpec:
    """Find the Choices -> Text pair of a labeling config; :class:`LabelConfigError` names what is wrong."""
    if not isinstance(label_config, str) or not label_config.strip():
        raise LabelConfigError("the labeling config is empty")
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.label_interface.control_tags import ChoicesTag
    from label_studio_sdk.label_interface.object_tags import TextTag

    try:
        interface = LabelInterface(label_config)
    except Exception as e:  # the SDK raises its own XML and validation errors
        raise LabelConfigError(f"the labeling config does not parse: {e}") from e

    pairs: list[tuple[ChoicesTag, TextTag]] = []
    for control in interface.controls:
        if not isinstance(control, ChoicesTag):
            continue
        objects = list(control.objects or [])
        texts = [obj for obj in objects if isinstance(obj, TextTag)]
        if len(texts) != 1 or len(objects) != 1:
            raise LabelConfigError(
                f"<Choices name={control.name!r}> must point at exactly one <Text>, "
                f"it points at {[obj.name for obj in objects] or control.to_name}"
            )
        pairs.append((control, texts[0]))
    if not pairs:
        raise LabelConfigError("the labeling config has no <Choices> control pointing at a <Text> object")
    if len(pairs) > 1:
        raise LabelConfigError(
            f"the labeling config has {len(pairs)} <Choices>/<Text> pairs "
            f"({[c.name for c, _ in pairs]}); this backend labels exactly one"
        )
    control, text = pairs[0]
    attr = control.attr or {}
    if control.dynamic_value or attr.get("value"):
        raise LabelConfigError(
            f"<Choices name={control.name!r}> takes its choices from task data; need fixed ones"
        )
    value = str(text.value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f'<Text name={text.name!r}> needs value="$<data key>", got {value!r}')
    labels_attrs = control.labels_attrs or {}
    choices = tuple(str(c) for c in control.labels or [])
    words = tuple(str((labels_attrs[c].attr or {}).get("value", c)) for c in choices)
    if len(choices) < 2:
        raise LabelConfigError(
            f"<Choices name={control.name!r}> needs at least 2 <Choice> values, got {choices}"
        )
    if len(set(choices)) != len(choices):
        raise LabelConfigError(f"<Choices name={control.name!r}> has duplicate choices: {list(choices)}")
    return LabelSpec(
        from_name=str(control.name),
        to_name=str(text.name),
        data_key=value[1:],
        choices=choices,
        class_words=words,
        multiple=attr.get("choice", "single") == "multiple",
    )
