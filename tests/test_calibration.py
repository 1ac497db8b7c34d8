"""Tests of ls_backend.calibration: fits, gradients, regularization, JSON round trips, estimator checks."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest

from ls_backend.calibration import (
    CALIBRATORS,
    DEFAULT_REG,
    BatchCalibration,
    Calibrator,
    ContextualCalibration,
    ConvergenceWarning,
    CorrectedCalibrator,
    Identity,
    MatrixScaling,
    NotFittedError,
    TemperatureScaling,
    VectorScaling,
    calibrator_from_dict,
    corrected,
    log_softmax,
    make_calibrator,
)
from ls_backend.confidence import confidence_scores, softmax
from ls_backend.metrics import ace

NAMES = sorted(CALIBRATORS)
FITTED = ["ST", "SV", "MS"]
LABEL_FREE = ["BC", "CC"]
LABEL_CASES = {"labels too short", "label outside", "unlabeled", "float labels"}


def draw_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class per row, drawn from that row's probabilities."""
    return (
        (rng.random(probs.shape[0])[:, None] > np.cumsum(probs, axis=1))
        .sum(axis=1)
        .clip(0, probs.shape[1] - 1)
    )


def toy_data(n: int = 60, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, n_classes)) * 3
    return logits, draw_labels(softmax(0.5 * logits), rng)


def over_confident_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits z; the LLM reports 4 z + noise; labels are drawn from softmax(z)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, 3)) * 1.5
    labels = draw_labels(softmax(true_logits), rng)
    return 4 * true_logits + rng.normal(size=(n, 3)) * 0.5, labels


# --- the "done when" --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FITTED)
def test_calibration_more_than_halves_ace_on_held_out_items(name: str) -> None:
    train_x, train_y = over_confident_task(400, seed=1)
    test_x, test_y = over_confident_task(4000, seed=2)
    hits = test_x.argmax(axis=1) == test_y
    before = ace(confidence_scores(test_x), hits)
    calibrator = make_calibrator(name).fit(train_x, train_y)
    after = ace(confidence_scores(test_x, calibrator=calibrator), hits)
    assert before > 0.1  # the synthetic LLM is clearly over-confident
    assert after < 0.5 * before


def test_temperature_is_recovered_from_many_sampled_labels() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(100_000, 3)) * 3
    labels = draw_labels(softmax(0.4 * logits), rng)
    fitted = TemperatureScaling().fit(logits, labels)
    assert fitted.a_ == pytest.approx(0.4, abs=0.01)  # the standard error is about 0.002


def expected_label_data(probs: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (item, class) pair weighted by the class's probability: a data set without sampling noise whose
    likelihood is maximized exactly at the parameters that produced ``probs``."""
    n, n_classes = logits.shape
    return np.repeat(logits, n_classes, axis=0), np.tile(np.arange(n_classes), n), probs.ravel()


def test_temperature_is_exact_at_the_noiseless_optimum() -> None:
    logits, _ = toy_data(50, 4)
    x, y, w = expected_label_data(softmax(0.7 * logits), logits)
    assert TemperatureScaling(reg=0).fit(x, y, sample_weight=w).a_ == pytest.approx(0.7, abs=1e-7)


def test_vector_scaling_is_exact_at_the_noiseless_optimum() -> None:
    logits, _ = toy_data(80, 3)
    scale, shift = np.array([0.5, 1.5, 0.9]), np.array([0.3, -0.2, 0.1])
    x, y, w = expected_label_data(softmax(logits * scale + shift), logits)
    fitted = VectorScaling(reg=0).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(fitted.A_, scale, atol=1e-6)
    # Softmax ignores a common shift of B; without a prior only the differences are identified.
    np.testing.assert_allclose(fitted.B_ - fitted.B_.mean(), shift - shift.mean(), atol=1e-6)


def test_matrix_scaling_is_exact_at_the_noiseless_optimum() -> None:
    logits, _ = toy_data(80, 3)
    weights = np.array([[0.8, 0.2, 0.0], [0.1, 1.2, -0.3], [0.0, 0.4, 0.6]])
    probs = softmax(logits @ weights.T + np.array([0.2, 0.0, -0.4]))
    x, y, w = expected_label_data(probs, logits)
    fitted = MatrixScaling(reg=0).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(fitted.predict_proba(logits), probs, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip_gives_identical_probabilities(name: str) -> None:
    logits, labels = toy_data(40, 3)
    calibrator = make_calibrator(name).fit(logits, labels)
    text = json.dumps(calibrator.to_dict())
    restored = calibrator_from_dict(json.loads(text))
    assert type(restored) is type(calibrator)
    assert restored.get_params() == calibrator.get_params()
    new_logits = np.random.default_rng(9).normal(size=(100, 3)) * 7
    assert np.array_equal(restored.predict_proba(new_logits), calibrator.predict_proba(new_logits))
    assert np.array_equal(
        type(calibrator).from_dict(json.loads(text)).transform(new_logits), calibrator.transform(new_logits)
    )
    assert "NaN" not in text and '"0.' not in text  # floats are JSON numbers, never strings


def test_json_holds_numbers() -> None:
    calibrator = VectorScaling().fit(*toy_data())
    d = json.loads(json.dumps(calibrator.to_dict()))
    assert d["calibrator"] == "SV"
    assert all(isinstance(v, float) for v in d["state"]["A_"] + d["state"]["B_"])


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_round_trip_stays_unfitted(name: str) -> None:
    restored = calibrator_from_dict(json.loads(json.dumps(make_calibrator(name).to_dict())))
    assert not restored.is_fitted()


# --- clear errors -------------------------------------------------------------------------------------------

BAD_FITS: list[tuple[str, Any, Any, Any, type[Exception], str]] = [
    ("labels too short", np.zeros((3, 2)), np.array([0, 1]), None, ValueError, "labels must have shape"),
    ("label outside", np.zeros((3, 2)), np.array([0, 1, 2]), None, ValueError, r"label\(s\) \[2\]"),
    ("unlabeled", np.zeros((3, 2)), np.array([0, -1, 1]), None, ValueError, "unlabeled"),
    ("empty", np.zeros((0, 2)), np.array([], dtype=int), None, ValueError, "empty"),
    ("NaN", np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]), None, ValueError, "NaN"),
    ("inf", np.array([[0.0, np.inf], [1.0, 0.0]]), np.array([0, 1]), None, ValueError, "infinite"),
    ("1-D logits", np.zeros(3), np.array([0, 1, 1]), None, ValueError, r"shape \(n, C\)"),
    ("one class", np.zeros((3, 1)), np.array([0, 0, 0]), None, ValueError, "at least 2 classes"),
    ("float labels", np.zeros((2, 2)), np.array([0.0, 1.0]), None, TypeError, "integer"),
    ("string logits", np.array([["a", "b"]]), np.array([0]), None, TypeError, "real numbers"),
    ("negative weight", np.zeros((2, 2)), np.array([0, 1]), np.array([1.0, -1.0]), ValueError, ">= 0"),
    (
        "weights shape",
        np.zeros((2, 2)),
        np.array([0, 1]),
        np.array([1.0]),
        ValueError,
        "sample_weight must have",
    ),
    ("NaN weight", np.zeros((2, 2)), np.array([0, 1]), np.array([1.0, np.nan]), ValueError, "NaN"),
    ("zero weights", np.zeros((2, 2)), np.array([0, 1]), np.zeros(2), ValueError, "sums to 0"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("case", "logits", "labels", "weights", "error", "message"), BAD_FITS, ids=[c[0] for c in BAD_FITS]
)
def test_fit_rejects_bad_input(
    name: str, case: str, logits: Any, labels: Any, weights: Any, error: type[Exception], message: str
) -> None:
    if name in LABEL_FREE and case in LABEL_CASES:
        # a label-free correction ignores labels (scikit-learn's fit(X, y=None)): it fits whatever they are
        make_calibrator(name).fit(logits, labels, sample_weight=weights)
        return
    with pytest.raises(error, match=message):
        make_calibrator(name).fit(logits, labels, sample_weight=weights)


@pytest.mark.parametrize("name", NAMES)
def test_transform_rejects_bad_input(name: str) -> None:
    calibrator = make_calibrator(name).fit(*toy_data(n_classes=3))
    with pytest.raises(ValueError, match="NaN"):
        calibrator.predict_proba(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="fitted on 3 classes, got 4"):
        calibrator.transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="empty"):
        calibrator.transform(np.zeros((0, 3)))


@pytest.mark.parametrize("name", FITTED)
def test_unfitted_calibrator_raises(name: str) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        make_calibrator(name).predict_proba(np.zeros((2, 3)))
    assert issubclass(NotFittedError, ValueError)


def test_identity_needs_no_fit() -> None:
    logits = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(Identity().predict_proba(logits), softmax(logits))


def test_bad_names_and_dicts() -> None:
    with pytest.raises(ValueError, match="unknown calibrator 'XX'"):
        make_calibrator("XX")
    with pytest.raises(ValueError, match="unknown parameter"):
        make_calibrator("ST", temperature=2)
    with pytest.raises(ValueError, match="unknown calibrator"):
        calibrator_from_dict({"calibrator": "XX", "params": {}, "state": {}})
    with pytest.raises(ValueError, match="not 'ST'"):
        TemperatureScaling.from_dict(VectorScaling().to_dict())
    d = VectorScaling().fit(*toy_data(n_classes=3)).to_dict()
    d["state"]["A_"] = [1.0, 1.0]
    with pytest.raises(ValueError, match="A_ must have 3 entries"):
        calibrator_from_dict(d)
    del d["state"]["B_"]
    with pytest.raises(ValueError, match="lacks field"):
        calibrator_from_dict(d)
    with pytest.raises(ValueError, match="reg must be"):
        TemperatureScaling(reg=-1).fit(*toy_data())


def test_non_convergence_warns() -> None:
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        fitted = VectorScaling(max_iter=1).fit(*over_confident_task(300, seed=4))
    assert not fitted.converged_


# --- gradient and regularization ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TemperatureScaling, VectorScaling, MatrixScaling])
def test_analytic_gradient_matches_finite_differences(cls: type[Any]) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 4)) * 2
    y = rng.integers(0, 4, 30)
    w = rng.random(30) * 2
    calibrator = cls(reg=0.7)
    theta = calibrator._identity_theta(4) + rng.normal(size=calibrator._identity_theta(4).size) * 0.3
    _, grad = calibrator.objective(theta, x, y, w)
    step = 1e-6
    numeric = np.array(
        [
            (
                calibrator.objective(theta + step * e, x, y, w)[0]
                - calibrator.objective(theta - step * e, x, y, w)[0]
            )
            / (2 * step)
            for e in np.eye(theta.size)
        ]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def separable_ten_shot() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(10, 2))
    return logits, logits.argmax(axis=1)


@pytest.mark.parametrize("name", FITTED)
def test_regularization_keeps_ten_shot_separable_fits_finite(name: str) -> None:
    logits, labels = separable_ten_shot()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the regularized fit converges
        regularized = make_calibrator(name).fit(logits, labels)
    unregularized = make_calibrator(name, reg=0.0).fit(logits, labels)
    new_logits = np.random.default_rng(7).normal(size=(200, 2))
    regularized_scores = regularized.predict_proba(new_logits).max(axis=1)
    assert regularized_scores.mean() < 0.85  # not driven to certainty by ten lucky items
    assert unregularized.predict_proba(new_logits).max(axis=1).mean() > 0.97  # the likelihood alone blows up
    assert largest_parameter(regularized) < 3 < 5 < largest_parameter(unregularized)


def largest_parameter(calibrator: Calibrator) -> float:
    fitted = [
        np.ravel(getattr(calibrator, name))
        for name in ("a_", "A_", "B_", "W_", "b_")
        if hasattr(calibrator, name)
    ]
    return float(np.abs(np.concatenate(fitted)).max())


def test_prior_fades_as_items_accumulate() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(20_000, 3)) * 3
    labels = draw_labels(softmax(0.3 * logits), rng)
    few = slice(0, 8)
    gap_few = abs(
        TemperatureScaling().fit(logits[few], labels[few]).a_
        - TemperatureScaling(reg=0).fit(logits[few], labels[few]).a_
    )
    gap_many = abs(
        TemperatureScaling().fit(logits, labels).a_ - TemperatureScaling(reg=0).fit(logits, labels).a_
    )
    assert gap_many < 1e-3 < gap_few
    assert TemperatureScaling(reg=1e9).fit(logits, labels).a_ == pytest.approx(1.0, abs=1e-3)
    assert DEFAULT_REG > 0


# --- scikit-learn style estimator checks, for every calibrator ----------------------------------------------


@pytest.fixture(params=NAMES)
def calibrator(request: pytest.FixtureRequest) -> Calibrator:
    return make_calibrator(request.param)


def test_fit_returns_self_and_sets_underscore_state(calibrator: Calibrator) -> None:
    assert calibrator.fit(*toy_data()) is calibrator
    assert calibrator.is_fitted()
    assert all(name.endswith("_") for name in calibrator.state_names)
    assert calibrator.n_classes_ == 3


def test_probabilities_are_distributions_and_shapes_kept(calibrator: Calibrator) -> None:
    calibrator.fit(*toy_data(n_classes=4))
    logits = np.random.default_rng(1).normal(size=(25, 4)) * 20
    probs = calibrator.predict_proba(logits)
    assert calibrator.transform(logits).shape == logits.shape == probs.shape
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_fit_does_not_mutate_inputs(calibrator: Calibrator) -> None:
    logits, labels = toy_data()
    weights = np.linspace(0.5, 2.0, logits.shape[0])
    copies = logits.copy(), labels.copy(), weights.copy()
    calibrator.fit(logits, labels, sample_weight=weights)
    calibrator.predict_proba(logits)
    for before, after in zip(copies, (logits, labels, weights), strict=True):
        np.testing.assert_array_equal(before, after)


def test_unit_weights_equal_no_weights(calibrator: Calibrator) -> None:
    logits, labels = toy_data()
    unweighted = make_calibrator(calibrator.name).fit(logits, labels).predict_proba(logits)
    weighted = calibrator.fit(logits, labels, sample_weight=np.ones(len(labels))).predict_proba(logits)
    assert np.array_equal(weighted, unweighted)


def test_integer_weights_equal_duplicated_items(calibrator: Calibrator) -> None:
    logits, labels = toy_data(n=40)
    counts = np.random.default_rng(2).integers(0, 4, len(labels))
    by_weight = calibrator.fit(logits, labels, sample_weight=counts).predict_proba(logits)
    index = np.repeat(np.arange(len(labels)), counts)
    by_copy = make_calibrator(calibrator.name).fit(logits[index], labels[index]).predict_proba(logits)
    np.testing.assert_allclose(by_weight, by_copy, rtol=1e-6, atol=1e-9)


def test_item_order_does_not_matter(calibrator: Calibrator) -> None:
    logits, labels = toy_data()
    order = np.random.default_rng(3).permutation(len(labels))
    probs = calibrator.fit(logits, labels).predict_proba(logits)
    shuffled = make_calibrator(calibrator.name).fit(logits[order], labels[order]).predict_proba(logits)
    np.testing.assert_allclose(probs, shuffled, rtol=1e-6, atol=1e-9)


def test_refit_with_same_params_is_deterministic(calibrator: Calibrator) -> None:
    logits, labels = toy_data()
    first = calibrator.fit(logits, labels).predict_proba(logits)
    clone = make_calibrator(calibrator.name, **calibrator.get_params())
    assert np.array_equal(clone.fit(logits, labels).predict_proba(logits), first)


def test_accepts_float32_and_integer_logits(calibrator: Calibrator) -> None:
    logits, labels = toy_data()
    calibrator.fit(logits.astype(np.float32), labels)
    assert calibrator.predict_proba(np.round(logits).astype(np.int64)).dtype == np.float64


@pytest.mark.parametrize("name", ["none", "ST"])
def test_temperature_keeps_the_ranking(name: str) -> None:
    logits, labels = toy_data()
    calibrator = make_calibrator(name).fit(logits, labels)
    np.testing.assert_array_equal(calibrator.predict_proba(logits).argmax(axis=1), logits.argmax(axis=1))


# --- label-free corrections ----------------------------------------------------------------------------------


def biased_binary_task(n: int, bias: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A balanced yes/no task whose LLM ranks well (margin = signal) but adds ``bias`` to the "no" logit."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)  # 0 = yes, 1 = no, half each
    margin = np.where(labels == 0, 1.0, -1.0) + rng.normal(size=n)
    return np.stack([margin / 2, -margin / 2 + bias], axis=1), labels


def test_batch_calibration_makes_the_mean_corrected_probability_uniform() -> None:
    logits, labels = toy_data(200, 4, seed=5)
    logits = logits + np.array([2.0, 0.0, -1.0, 0.5])
    probs = BatchCalibration().fit(logits, labels).predict_proba(logits)
    np.testing.assert_allclose(probs.mean(axis=0), 0.25, atol=1e-7)


def test_batch_calibration_matches_a_given_prior() -> None:
    logits, _ = toy_data(300, 3, seed=6)
    prior = np.array([0.6, 0.3, 0.1])
    probs = BatchCalibration(prior=prior).fit(logits).predict_proba(logits)
    np.testing.assert_allclose(probs.mean(axis=0), prior, atol=1e-7)
    with pytest.raises(ValueError, match="prior must be 3 positive numbers"):
        BatchCalibration(prior=[1.0, 0.0, 1.0]).fit(logits)


def test_batch_calibration_starts_from_the_mean_log_softmax() -> None:
    """Items that share one log-softmax row: the mean corrected probability is uniform exactly when the bias is
    that row (Zhou et al.'s estimate), so the fit must return it (centred)."""
    row = np.array([[1.5, -0.5, 0.25]])
    logits = (
        np.repeat(row, 10, axis=0) + np.arange(10)[:, None]
    )  # a per-item shift leaves the log-softmax alone
    fitted = BatchCalibration().fit(logits)
    expected = log_softmax(row)[0] - log_softmax(row)[0].mean()
    np.testing.assert_allclose(fitted.bias_, expected, atol=1e-8)
    assert fitted.n_items_ == 10


def test_batch_calibration_removes_a_prompt_bias_and_lifts_accuracy() -> None:
    logits, labels = biased_binary_task(2000, bias=2.5, seed=7)
    before = (logits.argmax(axis=1) == labels).mean()
    corrected = BatchCalibration().fit(logits).predict_proba(logits).argmax(axis=1)
    assert before < 0.65  # the bias makes the LLM answer "no" to most items
    assert (corrected == labels).mean() > before + 0.15
    assert abs((corrected == 0).mean() - 0.5) < 0.05  # balanced answers on a balanced task


def test_batch_calibration_forces_balance_on_an_imbalanced_task() -> None:
    """The limitation the natural-ratio tasks measure: with no labels, a class prior looks like a prompt bias."""
    logits, labels = biased_binary_task(4000, bias=0.0, seed=8)
    rare = np.concatenate([np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)[:200]])
    answers = BatchCalibration().fit(logits[rare]).predict_proba(logits[rare]).argmax(axis=1)
    assert (labels[rare] == 0).mean() < 0.1
    assert (answers == 0).mean() > 0.3


def test_contextual_calibration_makes_the_content_free_input_uniform() -> None:
    content_free = np.array([[3.0, 1.0], [2.0, 0.5], [2.5, 1.5]])
    cc = ContextualCalibration().fit(content_free)
    mean_cf = softmax(content_free).mean(axis=0)
    logits = np.random.default_rng(2).normal(size=(50, 2))
    expected = softmax(logits) / mean_cf
    np.testing.assert_allclose(cc.predict_proba(logits), expected / expected.sum(axis=1, keepdims=True))
    # one content-free input is mapped to the uniform distribution exactly
    single = ContextualCalibration().fit(content_free[:1])
    np.testing.assert_allclose(single.predict_proba(content_free[:1]), 0.5)


def test_corrected_calibrator_keeps_a_prefitted_correction_and_fits_on_corrected_logits() -> None:
    unlabeled, _ = biased_binary_task(1000, bias=2.0, seed=9)
    labeled, labels = biased_binary_task(80, bias=2.0, seed=10)
    bc = BatchCalibration().fit(unlabeled)
    bias = bc.bias_.copy()
    chained = CorrectedCalibrator(bc, "SV").fit(labeled, labels)
    np.testing.assert_array_equal(chained.correction.bias_, bias)  # not refitted on the 80 labeled items
    direct = VectorScaling().fit(bc.transform(labeled), labels)
    np.testing.assert_allclose(
        chained.predict_proba(unlabeled), direct.predict_proba(bc.transform(unlabeled))
    )
    restored = calibrator_from_dict(json.loads(json.dumps(chained.to_dict())))
    assert np.array_equal(restored.predict_proba(unlabeled), chained.predict_proba(unlabeled))
    assert corrected(None, direct) is direct


def test_corrected_calibrator_rejects_what_cannot_be_chained() -> None:
    with pytest.raises(TypeError, match="label-free correction"):
        CorrectedCalibrator("ST", "ST")
    with pytest.raises(TypeError, match="after a correction"):
        CorrectedCalibrator("BC", "CC")
    with pytest.raises(NotFittedError):
        CorrectedCalibrator("BC", "ST").predict_proba(np.zeros((2, 2)))
