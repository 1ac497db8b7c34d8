"""The answer study's student figures: the learning curves' data, the cost frontiers at 50 labels and their budget
picks (``ls_backend.benchmark.answers``), drawn by ``ls_backend.benchmark.figures.student_figures``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ls_backend.benchmark.answers import (
    CASCADE,
    FRONTIER_BUDGETS,
    FRONTIER_LABELS,
    WITH_STUDENT,
    AnswerStudy,
    FrontierRun,
    Recipe,
    StudySettings,
    frontier_picks,
    learning_curve,
    run_answer_study,
    student_frontier,
    student_markdown,
    view_names,
)
from ls_backend.benchmark.figures import LEARNING_CURVE_FILE, STUDENT_FRONTIER_FILE, student_figures
from ls_backend.plots import png_size
from ls_backend.synthetic import make_synthetic_scores, synthetic_embeddings, synthetic_item_embeddings

RECIPE = Recipe("none", "ST", "llm")
LABEL_COUNTS = (20, FRONTIER_LABELS)


@pytest.fixture(scope="module")
def study() -> AnswerStudy:
    """A small study whose student is all but perfect: embeddings that carry the labels with little noise, so the
    cascade with the student must stop at the student for almost every item."""
    table = make_synthetic_scores(n_tasks=4, n_items=120, seed=3, n_families=2, base_costs=(0.2, 0.6, 0.9))
    texts = {t.name: t.description or t.name for t in table}
    vectors = dict(zip(texts.values(), synthetic_embeddings(list(texts)), strict=True))

    def embed(batch: Sequence[str]) -> np.ndarray:
        return np.stack([vectors[t] for t in batch])

    items = {t.name: synthetic_item_embeddings(t.labels, 2, noise=0.05, seed=k) for k, t in enumerate(table)}
    settings = StudySettings(label_counts=LABEL_COUNTS, repeats=2, n_clusters=2, recipes=(RECIPE,))
    return run_answer_study(
        table, texts, embed, None, items, {}, settings, None, {t.name: 0.01 for t in table}
    )


def test_the_learning_curve_has_one_value_per_label_count_and_method(study: AnswerStudy) -> None:
    curve = learning_curve(study)
    assert curve is not None
    assert curve.labels.tolist() == list(LABEL_COUNTS)
    assert set(curve.accuracy) == {"student alone", "LLM cascade", "cascade with the student"}
    for rows in curve.accuracy.values():
        assert rows.shape == (3, len(LABEL_COUNTS))
        assert np.all(rows[1] <= rows[2]) and np.all((rows >= 0) & (rows <= 1))
    assert set(curve.llm_calls) == {"LLM cascade", "cascade with the student"}
    assert all(v.shape == (len(LABEL_COUNTS),) for v in curve.llm_calls.values())
    # every item asks at least one LLM in the LLM cascade; a near-perfect student leaves the LLMs almost idle
    assert np.all(curve.llm_calls["LLM cascade"] >= 1.0)
    assert np.all(curve.llm_calls["cascade with the student"] <= curve.llm_calls["LLM cascade"])
    assert curve.llm_calls["cascade with the student"][-1] < 0.5
    balanced = view_names(study, "balanced")
    student_accuracy = np.mean([study.results[v, "student", FRONTIER_LABELS]["accuracy"] for v in balanced])
    assert curve.accuracy["student alone"][0, -1] == pytest.approx(student_accuracy)


def test_frontiers_are_traced_for_both_cascades_on_every_balanced_task(study: AnswerStudy) -> None:
    balanced = view_names(study, "balanced")
    for method in (f"{CASCADE}:{RECIPE.name}", f"{WITH_STUDENT}:{RECIPE.name}"):
        for view in balanced:
            runs = study.frontiers[view, method]
            assert len(runs) == 2  # one per draw
            for run in runs:
                assert np.all(np.diff(run.train_cost) > 0) and np.all(np.diff(run.train_accuracy) > 0)
                assert run.test_f1.shape == run.train_cost.shape and run.every_llm > 0
    # the student's cheapest policy answers alone: it costs the student's embedding, a sliver of the LLMs
    cheapest = study.frontiers[balanced[0], f"{WITH_STUDENT}:{RECIPE.name}"][0].train_cost[0]
    assert 0 < cheapest < 0.01


def test_budget_picks_are_monotone_in_the_budget(study: AnswerStudy) -> None:
    runs = {v: study.frontiers[v, f"{WITH_STUDENT}:{RECIPE.name}"] for v in view_names(study, "balanced")}
    curve = frontier_picks(runs, FRONTIER_BUDGETS)
    assert curve.relative_cost.shape == curve.f1.shape == FRONTIER_BUDGETS.shape
    assert np.all(np.diff(curve.train_cost) >= 0) and np.all(np.diff(curve.train_accuracy) >= 0)
    assert np.all(curve.train_cost <= np.maximum(FRONTIER_BUDGETS, curve.train_cost[0]) * (1 + 1e-9))


def test_budget_picks_on_a_hand_made_frontier() -> None:
    def run(cost: list[float], accuracy: list[float], every: float) -> FrontierRun:
        c, a = np.array(cost), np.array(accuracy)
        return FrontierRun(c, a, c * every, a - 0.1, a, every)

    runs = {"a": [run([0.1, 0.5, 1.0], [0.6, 0.8, 0.9], 2.0)], "b": [run([0.2, 0.4], [0.7, 0.75], 4.0)]}
    curve = frontier_picks(runs, np.array([0.0, 0.1, 0.45, 0.5, 2.0]))
    # below the cheapest policy the cheapest one serves; at a budget equal to a policy's cost that policy
    assert curve.train_cost.tolist() == pytest.approx([0.15, 0.15, 0.25, 0.45, 0.7])
    assert curve.accuracy.tolist() == pytest.approx([0.65, 0.65, 0.675, 0.775, 0.825])
    # cost relative to asking every LLM: the ratio of the mean costs over views (as the tables' cost column)
    assert curve.relative_cost[-1] == pytest.approx((1.0 * 2.0 + 0.4 * 4.0) / 2 / 3.0)
    assert np.all(np.diff(curve.relative_cost) >= 0) and np.all(np.diff(curve.f1) >= 0)
    with pytest.raises(ValueError, match="no frontier"):
        frontier_picks({"a": []}, np.array([1.0]))


def test_the_frontier_figure_data_and_the_sentence_at_half_cost(study: AnswerStudy) -> None:
    frontier = student_frontier(study, ("small-llm", "medium-llm", "large-llm"))
    assert frontier is not None and frontier.labels == FRONTIER_LABELS
    assert set(frontier.curves) == {"LLM cascade frontier", "cascade with the student frontier"}
    assert {
        "student alone",
        "small-llm alone",
        "LLM cascade (served)",
        "cascade with the student (served)",
    } <= set(frontier.points)
    served_cost = frontier.points["LLM cascade (served)"][0]
    assert frontier.half is not None and frontier.half.budgets.tolist() == pytest.approx([0.5 * served_cost])
    markdown, headline = student_markdown(study, ("small-llm", "medium-llm", "large-llm"), StudySettings())
    assert "within half of the LLM cascade's cost" in markdown
    assert headline["half_cost_f1"] == pytest.approx(float(frontier.half.f1[0]))


def test_student_figures_are_written_and_linked(study: AnswerStudy, tmp_path: Path) -> None:
    links = student_figures(
        study, ("small-llm", "medium-llm", "large-llm"), tmp_path / "figures", tmp_path / "r.md"
    )
    assert sorted(links.values()) == [f"figures/{STUDENT_FRONTIER_FILE}", f"figures/{LEARNING_CURVE_FILE}"]
    for name in (LEARNING_CURVE_FILE, STUDENT_FRONTIER_FILE):
        assert min(png_size(tmp_path / "figures" / name)) > 300
    markdown, _ = student_markdown(study, ("small-llm", "medium-llm", "large-llm"), StudySettings(), links)
    for caption, link in links.items():
        assert f"![{caption}]({link})" in markdown


def test_a_study_without_a_student_has_no_student_figures(tmp_path: Path) -> None:
    empty = AnswerStudy()
    assert learning_curve(empty) is None and student_frontier(empty, ("a", "b")) is None
    assert student_figures(empty, ("a", "b"), tmp_path, tmp_path / "r.md") == {}
