"""Calibration samples: not-yet-labeled tasks drawn for annotators by U, SE or IE (docs/learning-loop.md), whose
labels calibrate with their inclusion probabilities as weights, shown in Label Studio's "Calibration sample" view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.confidence import softmax
from ls_backend.loop import LabelStore, draw_calibration_sample
from ls_backend.sampling import SAMPLERS
from ls_backend.server.project_registry import ProjectRegistry
from ls_backend.server.routing import Router
from ls_backend.server.serving import ProjectServing

if TYPE_CHECKING:
    from ls_backend.server.predictor import CascadePredictor


class CalibrationSampler:
    """Draws and marks a project's calibration sample.

    Args:
        predictor: its out-of-task model is the reference of the surrogate error.
        store: the label store (texts, labels, requests).
        registry: the registered projects.
        serving: scores the pool with the cheapest LLM, through the score cache.
        router: keeps the "Calibration sample" view.
    """

    def __init__(
        self,
        predictor: CascadePredictor,
        store: LabelStore,
        registry: ProjectRegistry,
        serving: ProjectServing,
        router: Router,
    ) -> None:
        self.predictor = predictor
        self.store = store
        self.registry = registry
        self.serving = serving
        self.router = router

    def sample(self, number: int, k: int, method: str, seed: int | None = None) -> dict[str, Any]:
        """Draw ``k`` not-yet-labeled tasks by U, SE or IE (surrogate error of the cheapest LLM: its plain softmax
        score vs its out-of-task calibrated score), mark them ``calibration`` with their inclusion probabilities,
        and show every calibration task in Label Studio's "Calibration sample" view."""
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {list(SAMPLERS)}, got {method!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        loop = self.registry.get(number)
        if loop is None:
            raise KeyError(f"project {number} is unknown to this backend (no /setup yet)")
        texts = self.store.texts(number)
        labeled = {int(t) for t in self.store.labels(number).task_ids}
        asked = set(self.store.requested_tasks(number, "calibration"))
        pool = sorted(t for t in texts if t not in labeled and t not in asked)
        result: dict[str, Any] = {"project": number, "method": method, "pool": len(pool), "drawn": []}
        if pool:
            answers, logits, _ = self.serving.score(loop, 0, [texts[t] for t in pool])
            rows = np.arange(len(pool))
            plain = softmax(np.asarray(logits, dtype=np.float64))[rows, answers]
            oot = self.predictor.oot_model(loop.setup)
            reference = oot.model.calibrated_probabilities(0, np.asarray(logits, dtype=np.float64))[
                rows, answers
            ]
            rng = np.random.default_rng(seed)
            draw = draw_calibration_sample(pool, plain, reference, k, method, rng)
            marked = self.store.mark_requests(
                number,
                draw.task_ids.tolist(),
                "calibration",
                oot.version,
                draw.inclusion_probabilities,
                method,
            )
            result["drawn"] = [
                {"task": int(t), "inclusion_probability": float(p), "surrogate_error": float(e)}
                for t, p, e in zip(draw.task_ids, draw.inclusion_probabilities, draw.errors, strict=True)
                if int(t) in set(marked)
            ]
        result["view"] = self.router.update_calibration_view(loop)
        return result
