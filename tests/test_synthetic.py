from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ls_backend import calibration, confidence, metrics
from ls_backend.scores import read_scores, write_scores
from ls_backend.synthetic import make_synthetic_scores, synthetic_embeddings, task_family


def test_shapes_names_and_descriptions() -> None:
    table = make_synthetic_scores(n_tasks=7, n_items=50, seed=1)
    assert len(table) == 7
    assert [task_family(name) for name in table.tasks] == ["spam", "sentiment", "topic"] * 2 + ["spam"]
    for task in table:
        assert task.logits.shape == (3, 50, 2) and task.classes == ("yes", "no")
        assert task.description.endswith("?")
        np.testing.assert_array_equal(task.answers, task.logits.argmax(axis=-1))
        assert (task.labels >= 0).all()
    assert len({t.description for t in table}) == 7


def test_costs_rise_across_llms_and_table_orders_them() -> None:
    table = make_synthetic_scores(n_items=100)
    assert table.llms == ("small-llm", "medium-llm", "large-llm")
    mean_cost = np.mean([t.costs.mean(axis=1) for t in table], axis=0)
    assert np.all(np.diff(mean_cost) > 0)


def test_reproducible_and_seed_dependent() -> None:
    a, b = make_synthetic_scores(seed=3, n_items=30), make_synthetic_scores(seed=3, n_items=30)
    c = make_synthetic_scores(seed=4, n_items=30)
    for name in a.tasks:
        np.testing.assert_array_equal(a[name].logits, b[name].logits)
    assert not np.allclose(a["spam_0"].logits, c["spam_0"].logits)


def test_llms_are_overconfident_and_skill_rises() -> None:
    """Measured: uncalibrated scores run above accuracy, temperature scaling lowers the fitted a below 1."""
    table = make_synthetic_scores(n_items=600, seed=0)
    accuracy = np.mean([[np.mean(t.answers[li] == t.labels) for li in range(3)] for t in table], axis=0)
    assert accuracy[0] < accuracy[2]
    for task in table:
        for li in range(3):
            scores = confidence.confidence_scores(task.logits[li], task.answers[li])
            hits = task.answers[li] == task.labels
            assert scores.mean() > hits.mean()  # over-confident
            st = calibration.TemperatureScaling()
            st.fit(task.logits[li], task.labels)
            assert st.a_ < 1.0
    # calibration on the task itself removes most of the error
    task = table["spam_0"]
    fitted = calibration.make_calibrator("ST").fit(task.logits[0], task.labels)
    hits = task.answers[0] == task.labels
    before = metrics.ace(confidence.confidence_scores(task.logits[0], task.answers[0]), hits)
    after = metrics.ace(confidence.confidence_scores(task.logits[0], task.answers[0], fitted), hits)
    assert after < 0.7 * before


def test_families_share_their_miscalibration() -> None:
    """Fitted SV biases are closer within a family than across families (what SIM-OOT relies on)."""
    table = make_synthetic_scores(n_tasks=9, n_items=800, seed=2)
    a = {}
    for t in table:
        sv = calibration.VectorScaling()
        sv.fit(t.logits[0], t.labels)
        a[t.name] = sv.B_
    names = list(a)
    within: list[float] = []
    across: list[float] = []
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            gap = float(np.abs(np.diff(a[x]) - np.diff(a[y])).item())
            (within if task_family(x) == task_family(y) else across).append(gap)
    assert np.mean(within) < np.mean(across)


def test_multiclass_unlabeled_fraction_and_prefix() -> None:
    table = make_synthetic_scores(
        n_tasks=2,
        n_items=300,
        classes=("a", "b", "c", "d"),
        llms=("x", "y"),
        labeled_fraction=0.5,
        name_prefix="mc-",
    )
    task = table["mc-spam_0"]
    assert task.logits.shape == (2, 300, 4)
    assert set(np.unique(task.labels[task.labels >= 0])) == {0, 1, 2, 3}
    assert 0.4 < task.labeled.mean() < 0.6


def test_round_trip_through_scores_file(tmp_path: Path) -> None:
    table = make_synthetic_scores(n_tasks=2, n_items=20, labeled_fraction=0.7)
    write_scores(table, tmp_path / "s.jsonl")
    again = read_scores(tmp_path / "s.jsonl", {t.name: t.description for t in table})
    for name in table.tasks:
        np.testing.assert_allclose(again[name].logits, table[name].logits)
        np.testing.assert_array_equal(again[name].labels, table[name].labels)


def test_embeddings_group_families() -> None:
    names = list(make_synthetic_scores(n_tasks=6, n_items=5).tasks)
    x = synthetic_embeddings(names)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)
    similarity = x @ x.T
    assert similarity[0, 3] > 0.7 > 0.4 > similarity[0, 1]  # spam_0 ~ spam_1, not ~ sentiment_0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": ("yes",)}, "classes"),
        ({"llms": ()}, "llms"),
        ({"n_tasks": 0}, "n_tasks"),
        ({"n_families": 9}, "n_families"),
        ({"labeled_fraction": 1.5}, "labeled_fraction"),
        ({"skills": (1.0, -1.0, 2.0)}, "skills"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic_scores(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="synthetic"):
        task_family("whatever")
