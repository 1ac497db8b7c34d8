"""The Label Studio ML backend server (see docs/server.md): the Flask app and the predictor it drives.

The names below are imported on first use (PEP 562), so that reading a config (``ls_backend.server.config``) or
a job module does not load Flask, torch or the app."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ls_backend.labelstudio import LabelConfigError, LabelSpec, parse_label_config
    from ls_backend.server.app import create_app
    from ls_backend.server.predictor import (
        CascadePredictor,
        Prediction,
        Predictor,
        ProjectSetup,
        ServedVersion,
    )

_HOMES = {
    "create_app": "ls_backend.server.app",
    "LabelConfigError": "ls_backend.labelstudio",
    "LabelSpec": "ls_backend.labelstudio",
    "parse_label_config": "ls_backend.labelstudio",
    "CascadePredictor": "ls_backend.server.predictor",
    "Prediction": "ls_backend.server.predictor",
    "Predictor": "ls_backend.server.predictor",
    "ProjectSetup": "ls_backend.server.predictor",
    "ServedVersion": "ls_backend.server.predictor",
}

__all__ = [
    "CascadePredictor",
    "LabelConfigError",
    "LabelSpec",
    "Prediction",
    "Predictor",
    "ProjectSetup",
    "ServedVersion",
    "create_app",
    "parse_label_config",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value
