"""The backend's configuration: a YAML file (``LWC_CONFIG``) merged with each project's ``extra_params``.

The file and ``extra_params`` have the same shape; ``extra_params`` (per project, set in Label Studio when the
ML backend is connected) wins key by key, mappings merged recursively, lists replaced::

    question: "Is this SMS message spam?"   # default: the project's description or instructions
    llms: [...]                # LLM specs, cheapest first (read by ls_backend.llms)
    prompt: {...}              # prompt template settings (read by ls_backend.llms)
    cascade: {...}             # answer strategies, bin edges, calibrators, thresholds (read by the cascade)
    max_text_chars: 2000       # longer texts are cut to this many characters
    max_tasks: 10000           # most tasks one /predict may carry
    confidence_bands: [0, 0.5, 0.6, 0.7, 0.8, 0.9, 1]   # the bands of the predictions metric
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "LWC_CONFIG"
KNOWN_KEYS = ("question", "llms", "prompt", "cascade", "max_text_chars", "max_tasks", "confidence_bands")


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
    """Label Studio's ``extra_params``: ``null``, a JSON object as a string, or an object."""
    if extra_params is None:
        return {}
    if isinstance(extra_params, str):
        if not extra_params.strip():
            return {}
        try:
            extra_params = json.loads(extra_params)
        except json.JSONDecodeError as e:
            raise ConfigError(f"extra_params is not valid JSON: {e}") from e
        if extra_params is None:
            return {}
    if not isinstance(extra_params, Mapping):
        raise ConfigError(f"extra_params must be a JSON object, got {type(extra_params).__name__}")
    return dict(extra_params)


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
        for key in ("prompt", "cascade"):
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
        return cls(
            question=question.strip() if question else None,
            llms=tuple(llms),
            prompt=dict(data.get("prompt", {})),
            cascade=dict(data.get("cascade", {})),
            max_text_chars=_positive_int(data, "max_text_chars", defaults.max_text_chars, source),
            max_tasks=_positive_int(data, "max_tasks", defaults.max_tasks, source),
            confidence_bands=tuple(float(b) for b in bands),
            raw=data,
        )

    def merged(self, override: Mapping[str, Any], source: str = "extra_params") -> BackendConfig:
        """This configuration with a project's ``extra_params`` on top."""
        if not override:
            return self
        return BackendConfig.from_mapping(deep_merge(self.raw, override), source=source)


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
