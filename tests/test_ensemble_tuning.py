"""Bin-edge tuning: the search space, the batched objective against the policy path, Optuna studies shared by
two worker processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.ensemble import QuantileEdgeSpace, SplitEvaluator, train_policy, tune_bin_edges
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.ensemble.tuning import random_splits
from ls_backend.loop.tuning import make_storage

ROOT = Path(__file__).resolve().parents[1]


def make_data(seed: int = 0, n_items: int = 600, n_llms: int = 3) -> dict[str, Any]:
    from ls_backend.confidence import confidence_scores
    from ls_backend.synthetic import make_synthetic_scores

    task = next(iter(make_synthetic_scores(n_tasks=1, n_items=n_items, seed=seed)))
    scores = np.stack([confidence_scores(task.logits[j], task.answers[j]) for j in range(n_llms)])
    return {
        "answers": task.answers[:n_llms],
        "scores": scores,
        "labels": task.labels,
        "costs": task.costs[:n_llms],
    }


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10), st.lists(st.floats(0.02, 1.0), min_size=30, max_size=30), st.integers(0, 100))
def test_search_space_only_produces_sorted_edges(n_bins: int, weights: list[float], seed: int) -> None:
    scores = np.random.default_rng(seed).random((3, 50)) ** 0.2  # crowded near 1, like over-confident LLMs
    space = QuantileEdgeSpace(scores, n_bins)
    params = {
        name: weights[i % len(weights)] for j in range(3) for i, name in enumerate(space.param_names(j))
    }
    for j, edges in enumerate(space.edges(params)):
        assert edges.shape == (n_bins - 1,)
        assert np.all(np.diff(edges) >= 0)
        assert scores[j].min() <= edges.min() and edges.max() <= scores[j].max()


def test_equal_weights_give_equal_frequency_bins() -> None:
    scores = np.random.default_rng(1).random((2, 1001))
    space = QuantileEdgeSpace(scores, 5)
    edges = space.edges(space.equal_params())
    for j in range(2):
        np.testing.assert_allclose(edges[j], np.quantile(scores[j], [0.2, 0.4, 0.6, 0.8]))


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("positive_class", [None, 1])
def test_batched_objective_equals_training_and_inference_per_split(
    lam: float, positive_class: int | None
) -> None:
    d = make_data(seed=3)
    evaluator = SplitEvaluator(
        d["answers"], d["scores"], d["labels"], costs=d["costs"], n_splits=4, seed=5, lam=lam,
        positive_class=positive_class,
    )  # fmt: skip
    edges = [np.quantile(d["scores"][j], [0.3, 0.6, 0.9]) for j in range(3)]
    result = evaluator.evaluate(edges)
    train_sets, test_sets = random_splits(d["answers"].shape[1], 4, 0.2, 5)
    for r, (train, test) in enumerate(zip(train_sets, test_sets, strict=True)):
        policy = train_policy(
            d["answers"][:, train], d["scores"][:, train], d["labels"][train], edges, costs=d["costs"][:, train],
            lam=lam, n_classes=2,
        )  # fmt: skip
        predicted = policy.predict(d["answers"][:, test], d["scores"][:, test])
        expected = precision_recall_f1(d["labels"][test], predicted.predictions, 2, positive_class)
        assert result["f1"][r] == pytest.approx(float(expected["f1"]), abs=1e-12)
        assert result["cost_per_item"][r] == pytest.approx(predicted.item_costs(d["costs"][:, test]).mean())
    assert evaluator.score(edges) == pytest.approx(float(np.mean(result["f1"])))


def test_tuning_returns_sorted_edges_and_a_best_value_that_recomputes_exactly() -> None:
    d = make_data(seed=4)
    result = tune_bin_edges(d["answers"], d["scores"], d["labels"], n_bins=5, n_trials=25, n_splits=3, seed=2)
    assert len(result.edges) == 3
    assert all(e.shape == (4,) and np.all(np.diff(e) >= 0) for e in result.edges)
    evaluator = SplitEvaluator(d["answers"], d["scores"], d["labels"], n_splits=3, seed=2)
    assert evaluator.score(result.edges) == result.best_value
    space = QuantileEdgeSpace(d["scores"], 5)
    assert evaluator.score(space.edges(result.best_params)) == result.best_value
    assert result.best_value == max(t.value for t in result.study.trials if t.value is not None)
    # The first trial is the equal-frequency baseline, so tuning is never worse than it.
    assert result.best_value >= evaluator.score(space.edges(space.equal_params()))
    again = tune_bin_edges(d["answers"], d["scores"], d["labels"], n_bins=5, n_trials=25, n_splits=3, seed=2)
    assert again.best_params == result.best_params  # seeded


def test_bad_tuning_arguments() -> None:
    d = make_data(seed=4, n_items=50)
    with pytest.raises(ValueError, match="storage must be"):
        make_storage("not-a-url")
    with pytest.raises(ValueError, match="n_trials"):
        tune_bin_edges(d["answers"], d["scores"], d["labels"], n_trials=0)
    with pytest.raises(ValueError, match="test_size"):
        SplitEvaluator(d["answers"], d["scores"], d["labels"], test_size=1.5)
    with pytest.raises(ValueError, match="n_bins"):
        QuantileEdgeSpace(d["scores"], 1)


WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ls_backend.ensemble import tune_bin_edges
    from ls_backend.loop.tuning import make_storage
    from ls_backend.synthetic import make_synthetic_scores
    from ls_backend.confidence import confidence_scores

    storage, worker = sys.argv[1], int(sys.argv[2])
    task = next(iter(make_synthetic_scores(n_tasks=1, n_items=400, seed=11)))
    scores = np.stack([confidence_scores(task.logits[j], task.answers[j]) for j in range(3)])
    result = tune_bin_edges(task.answers, scores, task.labels, n_bins=5, n_trials=6, n_splits=2, seed=0,
                            storage=make_storage(storage), study_name="shared", worker_id=worker)
    print(result.best_value)
    """
)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_worker_processes_share_one_study(tmp_path: Path, kind: str) -> None:
    import optuna

    url = (
        f"journal:{tmp_path / 'study.journal'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    )
    optuna.create_study(storage=make_storage(url), study_name="shared", direction="maximize")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(w)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    for worker in workers:
        _out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
    storage = make_storage(url)
    assert storage is not None
    study = optuna.load_study(storage=storage, study_name="shared")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 12
    assert {t.user_attrs["worker"] for t in complete} == {1, 2}
    assert sum(t.user_attrs["worker"] == 1 for t in complete) == 6
