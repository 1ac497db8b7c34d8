"""Answer rules, served scores that agree with the answer, label-free corrections in fitting and serving."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.calibration import (
    CONTENT_FREE_TEXTS,
    BatchCalibration,
    ContextualCalibration,
    CorrectedCalibrator,
    VectorScaling,
    make_calibrator,
)
from ls_backend.ensemble import quantile_edges, train_policy
from ls_backend.llms.cache import ScoreCache
from ls_backend.loop.fitting import (
    InTaskSettings,
    LabeledPart,
    fit_correction,
    fit_in_task_model,
    train_oot_policy,
)
from ls_backend.loop.model import ANSWER_RULES, ServingModel, calibrated_answers, check_answer_rules
from ls_backend.server.config import ANSWER_NAMES, CORRECTION_NAMES, CascadeSettings, ConfigError
from ls_backend.server.corrections import (
    LLMPrompt,
    ProjectCorrections,
    bc_checkpoint,
    correction_kinds,
    tag_of,
)

LLMS = ("cheap", "mid", "costly")
CLASSES = ("yes", "no")


def biased_outputs(n: int, seed: int, n_llms: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (L, n, 2) of LLMs that rank well but add a growing bias to "no"; labels (n,); costs (L, n)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    signal = np.where(labels == 0, 1.0, -1.0)
    logits = np.stack(
        [
            np.stack([signal + rng.normal(size=n), 1.5 * (k + 1) + rng.normal(size=n) * 0.3], axis=1)
            for k in range(n_llms)
        ]
    )
    costs = np.broadcast_to(np.arange(1.0, n_llms + 1)[:, None], (n_llms, n)).copy()
    return logits, labels, costs


def test_the_config_names_are_the_library_names() -> None:
    from ls_backend.calibration import CORRECTIONS

    assert ANSWER_NAMES == ANSWER_RULES
    assert CORRECTION_NAMES == CORRECTIONS


def test_answer_rules_are_checked() -> None:
    assert check_answer_rules("calibrated", 3) == ("calibrated",) * 3
    assert check_answer_rules(["llm", "calibrated"], 2) == ("llm", "calibrated")
    with pytest.raises(ValueError, match="unknown answer rule"):
        check_answer_rules("argmax", 2)
    with pytest.raises(ValueError, match="3 answer rules for 2 LLMs"):
        check_answer_rules(["llm"] * 3, 2)
    with pytest.raises(ConfigError, match=r"cascade\.answer must be one of"):
        CascadeSettings.from_mapping({"answer": "vote"})
    with pytest.raises(ConfigError, match=r"cascade\.correction must be one of"):
        CascadeSettings.from_mapping({"correction": "BC2"})


def test_calibrated_answers_follow_the_calibrated_argmax_and_llm_answers_stay() -> None:
    logits, labels, _ = biased_outputs(400, seed=1, n_llms=1)
    llm_answers = logits[0].argmax(axis=1)
    sv = VectorScaling().fit(logits[0], labels)
    answers, scores = calibrated_answers([sv], logits, llm_answers[None], ["calibrated"])
    probs = sv.predict_proba(logits[0])
    np.testing.assert_array_equal(answers[0], probs.argmax(axis=1))
    np.testing.assert_allclose(scores[0], probs.max(axis=1))
    assert (answers[0] != llm_answers).mean() > 0.2  # the bias moved many answers
    kept, kept_scores = calibrated_answers([sv], logits, llm_answers[None], ["llm"])
    np.testing.assert_array_equal(kept[0], llm_answers)
    np.testing.assert_allclose(kept_scores[0], probs[np.arange(400), llm_answers])
    assert (answers[0] == labels).mean() > (llm_answers == labels).mean() + 0.15


def fitted_model(
    seed: int, answer: str, n: int = 300
) -> tuple[ServingModel, np.ndarray, np.ndarray, np.ndarray]:
    logits, labels, costs = biased_outputs(n, seed)
    calibrators = [make_calibrator("SV").fit(logits[k], labels) for k in range(3)]
    llm_answers = logits.argmax(axis=2)
    answers, scores = calibrated_answers(calibrators, logits, llm_answers, (answer,) * 3)
    edges = [quantile_edges(scores[k], 3) for k in range(3)]
    policy = train_policy(
        answers, scores, labels, edges, costs=costs, n_classes=2, llms=LLMS, classes=CLASSES
    )
    return ServingModel(LLMS, CLASSES, calibrators, policy, answer), logits, llm_answers, labels


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_with_calibrated_answers_the_answer_is_the_most_probable_class_served(seed: int) -> None:
    model, logits, _, _ = fitted_model(seed % 7, "calibrated")
    rng = np.random.default_rng(seed)
    fresh = logits + rng.normal(size=logits.shape)
    served = model.predict(fresh, fresh.argmax(axis=2))
    probs = np.stack([model.calibrated_probabilities(k, fresh[k]) for k in range(3)])
    for i in range(fresh.shape[1]):
        depth, final = int(served.depth[i]), int(served.predictions[i])
        decision = model.policy.strategies[int(served.cascade.actions[depth - 1, i])]
        if decision.startswith("llm"):
            distribution = probs[int(decision[3:]), i]
        else:
            supporters = served.cascade.answers[:depth, i] == final
            distribution = probs[:depth, i][supporters].mean(axis=0)
        assert served.scores[i] == pytest.approx(distribution[final])
        assert distribution[final] >= distribution.max() - 1e-12  # answer and score agree
    assert (served.scores >= 0.5 - 1e-12).all()  # binary: the answered class is never the less probable one


def test_the_answer_rule_round_trips_and_old_files_serve_llm_answers() -> None:
    model, *_ = fitted_model(3, "calibrated")
    restored = ServingModel.from_dict(model.to_dict())
    assert restored.answer == ("calibrated",) * 3
    old = model.to_dict()
    del old["answer"]
    assert ServingModel.from_dict(old).answer == ("llm",) * 3


def test_fit_correction_by_name() -> None:
    logits, _, _ = biased_outputs(100, seed=2, n_llms=1)
    assert isinstance(fit_correction("BC", logits[0], None), BatchCalibration)
    assert isinstance(fit_correction("CC", None, logits[0, :3]), ContextualCalibration)
    assert fit_correction("none", logits[0], logits[0, :3]) is None
    assert fit_correction("CC", logits[0], None) is None  # no content-free scores: no correction
    with pytest.raises(ValueError, match="unknown correction"):
        fit_correction("XY", logits[0], None)


def test_in_task_fit_keeps_the_projects_corrections_and_fits_on_corrected_logits() -> None:
    logits, labels, costs = biased_outputs(200, seed=4)
    corrections = [BatchCalibration().fit(logits[k]) for k in range(3)]
    fit = fit_in_task_model(
        LLMS, CLASSES, logits[:, :60], logits[:, :60].argmax(axis=2), labels[:60], costs[:, :60], corrections,
        "calibrated", InTaskSettings(calibrator="SV"),
    )  # fmt: skip
    for k, calibrator in enumerate(fit.model.calibrators):
        assert isinstance(calibrator, CorrectedCalibrator)
        assert calibrator.correction is corrections[k]
        direct = VectorScaling().fit(corrections[k].transform(logits[k, :60]), labels[:60])
        np.testing.assert_allclose(
            calibrator.predict_proba(logits[k]), direct.predict_proba(corrections[k].transform(logits[k]))
        )
    assert fit.model.answer == ("calibrated",) * 3
    assert fit.tuning == {"n_trials": 0, "equal_frequency_bins": 3}


def test_out_of_task_policy_reads_each_source_through_its_own_correction() -> None:
    parts = []
    for seed in (5, 6):
        logits, labels, costs = biased_outputs(150, seed)
        parts.append(LabeledPart(logits, logits.argmax(axis=2), labels, costs,
                                 tuple(BatchCalibration().fit(logits[k]) for k in range(3))))  # fmt: skip
    calibrators = [make_calibrator("ST").fit(np.concatenate([p.corrections[k].transform(p.logits[k]) for p in parts]),
                                             np.concatenate([p.labels for p in parts])) for k in range(3)]  # fmt: skip
    policy = train_oot_policy(parts, calibrators, ("calibrated",) * 3, 3, 0.0, LLMS, CLASSES)
    uncorrected = train_oot_policy(
        [LabeledPart(p.logits, p.answers, p.labels, p.costs, (None,) * 3) for p in parts],
        calibrators, ("llm",) * 3, 3, 0.0, LLMS, CLASSES,
    )  # fmt: skip
    assert policy.metadata["train_accuracy"] > uncorrected.metadata["train_accuracy"] + 0.1


# --- the server's corrections ---------------------------------------------------------------------------------


def test_bc_checkpoints_double() -> None:
    assert [bc_checkpoint(n, 50) for n in (0, 49, 50, 99, 100, 199, 200, 1000)] == [
        None, None, 50, 50, 100, 100, 200, 800,
    ]  # fmt: skip
    assert correction_kinds("BC", [10, 120, 60], 50) == ["cc", "bc100", "bc50"]
    assert correction_kinds("CC", [0, 0], 50) == ["cc", "cc"]
    assert tag_of(correction_kinds("none", [5], 50)) == ""
    assert tag_of(["bc100", "cc"]) == "bc100.cc"


def test_project_corrections_come_from_the_score_cache(tmp_path) -> None:
    cache = ScoreCache(tmp_path / "scores.sqlite")
    logits, _, _ = biased_outputs(130, seed=7, n_llms=1)
    texts = [f"text {i}" for i in range(130)]
    cache.put_many("m", "r", "p", texts[:70], logits[0, :70].argmax(1), logits[0, :70], np.zeros(70))
    cache.put_many("m", "r", "p", list(CONTENT_FREE_TEXTS), np.zeros(3, int), np.zeros((3, 2)), np.zeros(3))
    assert cache.count("m", "r", "p") == 73
    assert cache.count("m", "r", "p", exclude=CONTENT_FREE_TEXTS) == 70
    sample = cache.first_logits("m", "r", "p", 50, exclude=CONTENT_FREE_TEXTS)
    # a fixed sample: oldest first, ties (one batch) by text hash; never a content-free row
    assert sample.shape == (50, 2)
    assert all((logits[0, :70] == row).all(axis=1).any() for row in sample)
    np.testing.assert_array_equal(sample, cache.first_logits("m", "r", "p", 50, exclude=CONTENT_FREE_TEXTS))
    calls: list[int] = []

    def content_free(k: int) -> np.ndarray:
        calls.append(k)
        return np.array([[0.5, 0.0], [1.0, 0.2], [0.0, 0.0]])

    key = [LLMPrompt("m", "r", "p")]
    corrections = ProjectCorrections()
    state = corrections.state("BC", key, cache, 50, content_free)
    assert state.tag == "bc50" and calls == []
    np.testing.assert_allclose(state.corrections[0].bias_, BatchCalibration().fit(sample).bias_)
    assert corrections.state("BC", key, cache, 50, content_free).corrections[0] is state.corrections[0]
    assert corrections.state("BC", key, cache, 100, content_free).tag == "cc" and calls == [0]
    cache.put_many("m", "r", "p", texts[70:], logits[0, 70:].argmax(1), logits[0, 70:], np.zeros(60))
    assert corrections.state("BC", key, cache, 50, content_free).tag == "bc100"

    def broken(k: int) -> np.ndarray:
        raise RuntimeError("this LLM cannot score an empty text")

    assert ProjectCorrections().state("CC", key, cache, 50, broken).corrections == (None,)


def test_a_cost_weight_in_the_tasks_own_units_makes_the_policy_stop_earlier() -> None:
    logits, labels, costs = biased_outputs(300, seed=8)
    fits = {}
    for weight in (0.0, 0.3, 5.0):
        settings = InTaskSettings(cost_weight=weight)
        # the same weight whatever the cost unit: seconds or milliseconds give one lam per unit of cost
        assert settings.lam_for(costs * 1000.0) == pytest.approx(settings.lam_for(costs) / 1000.0)
        fits[weight] = fit_in_task_model(
            LLMS, CLASSES, logits[:, :200], logits[:, :200].argmax(axis=2), labels[:200], costs[:, :200],
            [None] * 3, "calibrated", settings,
        )  # fmt: skip
    assert InTaskSettings().lam_for(costs) == 0.0
    assert InTaskSettings(cost_weight=1.0).lam_for(costs) == pytest.approx(1.0 / costs.sum(axis=0).mean())
    depth = {
        w: f.model.predict(logits[:, 200:], logits[:, 200:].argmax(axis=2), costs[:, 200:]).depth.mean()
        for w, f in fits.items()
    }
    assert depth[5.0] <= depth[0.3] <= depth[0.0] and depth[5.0] < depth[0.0]
    assert depth[5.0] == pytest.approx(
        1.0
    )  # asking everything is worth far less than it costs: the first only
