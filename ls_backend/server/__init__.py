"""The Label Studio ML backend server (see docs/server.md): the Flask app and the predictor it drives."""

from ls_backend.server.app import create_app
from ls_backend.server.labeling import LabelConfigError, LabelSpec, parse_label_config
from ls_backend.server.predictor import CascadePredictor, Prediction, Predictor, ProjectSetup, ServedVersion

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
