"""Cascade policy: training (Algorithm 1) against a reference, staged inference (Algorithm 2), unseen keys,
explanations, JSON round trips, the cost frontier and the budget mode."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.ensemble import (
    GO_DEEPER,
    NOT_REACHED,
    CascadePolicy,
    cost_frontier,
    default_strategies,
    train_policy,
    train_within_budget,
)
from ls_backend.ensemble.bins import encode_keys

# ---------------------------------------------------------------------------------------------------------------
# A straightforward reference of Algorithm 1 (dicts and loops over keys and items)


def reference_train(
    answers: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    edges: list[np.ndarray],
    costs: np.ndarray,
    lam: float,
    n_classes: int,
) -> tuple[dict[tuple[int, ...], Any], dict[tuple[int, ...], int]]:
    n_llms, n_items = answers.shape
    strategies = default_strategies(n_llms)
    n_bins = [len(e) + 1 for e in edges]
    item_bins = [tuple(int(np.searchsorted(edges[j], scores[j, i], side="right")) for j in range(n_llms))
                 for i in range(n_items)]  # fmt: skip

    def hits(strategy_id: int, k: int, items: list[int]) -> int:
        strategy = strategies[strategy_id]
        return sum(int(strategy(answers[:k, [i]], scores[:k, [i]], n_classes)[0] == labels[i]) for i in items)

    value: dict[tuple[int, ...], float] = {}
    action: dict[tuple[int, ...], Any] = {}
    count: dict[tuple[int, ...], int] = {}
    for k in range(n_llms, 0, -1):
        available = [i for i, s in enumerate(strategies) if s.min_llms <= k]
        for key in itertools.product(*[range(b) for b in n_bins[:k]]):
            items = [i for i in range(n_items) if item_bins[i][:k] == key]
            count[key] = len(items)
            best, best_hits = None, -1
            for s in available:
                h = hits(s, k, items)
                if h > best_hits:
                    best, best_hits = s, h
            now = best_hits - lam * sum(float(costs[:k, i].sum()) for i in items)
            choice: Any = best
            value[key] = now
            if k < n_llms:
                deeper = 0.0
                for b in range(n_bins[k]):
                    deeper += value[(*key, b)]
                if deeper > now:
                    choice, value[key] = "deeper", deeper
            if not items:
                parent_items = [i for i in range(n_items) if item_bins[i][: k - 1] == key[:-1]]
                best, best_hits = None, -1
                for s in available:
                    h = hits(s, k, parent_items)
                    if h > best_hits:
                        best, best_hits = s, h
                choice = best
            action[key] = choice
    return action, count


@st.composite
def training_data(draw: st.DrawFn) -> dict[str, Any]:
    n_llms = draw(st.integers(1, 3))
    n_items = draw(st.integers(1, 40))
    n_classes = draw(st.integers(2, 3))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_items)
    accuracy = rng.uniform(0.3, 0.9, size=(n_llms, 1))
    answers = np.where(
        rng.random((n_llms, n_items)) < accuracy, labels, rng.integers(0, n_classes, (n_llms, n_items))
    )
    scores = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, 1.0], size=(n_llms, n_items))
    edges = [np.sort(rng.choice([0.2, 0.4, 0.6, 0.8, 0.95], size=draw(st.integers(0, 2)), replace=False))
             for _ in range(n_llms)]  # fmt: skip
    costs = rng.integers(0, 4, size=(n_llms, n_items)).astype(float)
    lam = draw(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.5]))
    return {"answers": answers, "scores": scores, "labels": labels, "edges": edges, "costs": costs, "lam": lam,
            "n_classes": n_classes}  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(training_data())
def test_fast_training_equals_reference(data: dict[str, Any]) -> None:
    policy = train_policy(
        data["answers"], data["scores"], data["labels"], data["edges"], costs=data["costs"], lam=data["lam"],
        n_classes=data["n_classes"],
    )  # fmt: skip
    actions, counts = reference_train(
        data["answers"],
        data["scores"],
        data["labels"],
        data["edges"],
        data["costs"],
        data["lam"],
        data["n_classes"],
    )
    n_bins = policy.n_bins
    for key, expected in actions.items():
        k = len(key)
        encoded = int(encode_keys(np.array(key)[:, None], n_bins[:k])[-1, 0])
        assert policy.counts[k - 1][encoded] == counts[key]
        assert policy.actions[k - 1][encoded] == (GO_DEEPER if expected == "deeper" else expected), (key, k)


@settings(max_examples=80, deadline=None)
@given(training_data())
def test_policy_never_worse_than_any_single_strategy_and_tables_match_inference(data: dict[str, Any]) -> None:
    answers, scores, labels, n_classes = data["answers"], data["scores"], data["labels"], data["n_classes"]
    policy = train_policy(answers, scores, labels, data["edges"], costs=data["costs"], n_classes=n_classes)
    train_hits, train_cost, _n = policy.training_totals()
    result = policy.predict(answers, scores)
    assert train_hits == (result.predictions == labels).sum()
    assert train_cost == pytest.approx(result.item_costs(data["costs"]).sum())
    for k in range(1, answers.shape[0] + 1):
        for strategy in default_strategies(answers.shape[0]):
            if strategy.min_llms <= k:
                assert train_hits >= (strategy(answers[:k], scores[:k], n_classes) == labels).sum()


def reference_route(policy: CascadePolicy, answers: np.ndarray, scores: np.ndarray) -> list[tuple[int, int]]:
    """Algorithm 2 item by item: (depth, answer)."""
    out = []
    for i in range(answers.shape[1]):
        key = 0
        for k in range(policy.n_llms):
            key = key * int(policy.n_bins[k]) + int(
                np.searchsorted(policy.edges[k], scores[k, i], side="right")
            )
            action = int(policy.actions[k][key])
            if action != GO_DEEPER:
                strategy = policy.strategy_objects()[action]
                out.append(
                    (k + 1, int(strategy(answers[: k + 1, [i]], scores[: k + 1, [i]], policy.n_classes)[0]))
                )
                break
    return out


@settings(max_examples=60, deadline=None)
@given(training_data(), st.integers(0, 2**31))
def test_staged_inference_asks_each_llm_only_where_needed(data: dict[str, Any], seed: int) -> None:
    policy = train_policy(
        data["answers"], data["scores"], data["labels"], data["edges"], costs=data["costs"], lam=data["lam"],
        n_classes=data["n_classes"],
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    n_llms, n_new = data["answers"].shape[0], 50
    answers = rng.integers(0, data["n_classes"], (n_llms, n_new))
    scores = rng.choice([0.05, 0.3, 0.5, 0.7, 0.9, 1.0], size=(n_llms, n_new))
    asked: dict[int, np.ndarray] = {}

    def score_llm(k: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert k not in asked and items.size > 0
        asked[k] = items
        return answers[k, items], scores[k, items]

    result = policy.predict_staged(score_llm, n_new)
    np.testing.assert_array_equal(asked[0], np.arange(n_new))
    for k in range(1, n_llms):
        needed = np.flatnonzero(result.actions[k - 1] == GO_DEEPER)
        np.testing.assert_array_equal(asked.get(k, np.array([], dtype=np.int64)), needed)
        assert result.calls[k] == needed.size
        assert (result.answers[k, needed] == answers[k, needed]).all()
        assert (result.answers[k][~np.isin(np.arange(n_new), needed)] == -1).all()
    expected = reference_route(policy, answers, scores)
    np.testing.assert_array_equal(result.depth, [d for d, _ in expected])
    np.testing.assert_array_equal(result.predictions, [a for _, a in expected])
    assert ((result.actions == NOT_REACHED) == (np.arange(n_llms)[:, None] >= result.depth)).all()
    costs = np.array([1.0, 10.0, 100.0])[:n_llms]
    np.testing.assert_allclose(result.item_costs(costs), [costs[:d].sum() for d in result.depth])
    np.testing.assert_array_equal(result.calls, [(result.depth > k).sum() for k in range(n_llms)])


def unseen_key_setup() -> tuple[CascadePolicy, np.ndarray, np.ndarray]:
    """Training items all have LLM 0 and LLM 1 scores below 0.5; LLM 1 is right, LLM 0 half wrong."""
    labels = np.array([0, 1] * 10)
    answers = np.stack([np.where(np.arange(20) % 4 < 2, labels, 1 - labels), labels])
    scores = np.full((2, 20), 0.3)
    policy = train_policy(answers, scores, labels, [[0.5], [0.5]])
    return policy, answers, scores


def test_unseen_keys_answer_with_the_parents_best_strategy() -> None:
    policy, _, _ = unseen_key_setup()
    # Level 1: key (1,) is unseen -> the best level-1 strategy on all items (llm0); key (0,) goes deeper.
    assert policy.counts[0].tolist() == [20, 0]
    assert policy.actions[0].tolist() == [GO_DEEPER, policy.strategies.index("llm0")]
    # Level 2: (0, 1) is unseen -> the level-2 strategy with most hits on its parent (0,)'s items: llm1.
    assert policy.counts[1].tolist() == [20, 0, 0, 0]
    assert policy.actions[1][1] == policy.strategies.index("llm1")
    assert policy.actions[1][1] != GO_DEEPER
    result = policy.predict(np.array([[0, 1], [1, 0]]), np.array([[0.2, 0.9], [0.9, 0.9]]))
    assert result.depth.tolist() == [2, 1]
    assert result.predictions.tolist() == [1, 1]  # item 0: llm1's answer; item 1: llm0's answer
    steps = policy.explain(result, 0)
    assert [s["decision"] for s in steps] == ["go deeper", "llm1"]
    assert [s["unseen_key"] for s in steps] == [False, True]
    assert steps[1]["bins"] == [0, 1] and steps[1]["train_items"] == 0


def test_explanation_carries_the_training_counts() -> None:
    policy, answers, scores = unseen_key_setup()
    result = policy.predict(answers, scores)
    steps = policy.explain(result, 3)
    assert steps[0]["train_items"] == 20 and steps[0]["train_hits"] == {"llm0": 10.0}
    assert steps[0]["go_deeper_value"] == 20.0 and steps[0]["answer_now_value"] == 10.0
    assert steps[1]["train_hits"]["llm1"] == 20.0
    assert steps[-1]["final_answer"] == result.predictions[3]
    with pytest.raises(IndexError):
        policy.explain(result, 20)


@settings(max_examples=40, deadline=None)
@given(training_data(), st.integers(0, 2**31))
def test_json_round_trip_gives_identical_decisions(data: dict[str, Any], seed: int) -> None:
    policy = train_policy(
        data["answers"], data["scores"], data["labels"], data["edges"], costs=data["costs"], lam=data["lam"],
        n_classes=data["n_classes"], calibrators=[{"calibrator": "ST", "a_": 0.5}] * data["answers"].shape[0],
        metadata={"note": "test"},
    )  # fmt: skip
    loaded = CascadePolicy.from_json(policy.to_json())
    rng = np.random.default_rng(seed)
    answers = rng.integers(0, data["n_classes"], (policy.n_llms, 30))
    scores = rng.random((policy.n_llms, 30))
    a, b = policy.predict(answers, scores), loaded.predict(answers, scores)
    for name in ("predictions", "depth", "keys", "actions", "calls"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert [policy.explain(a, i) for i in range(30)] == [loaded.explain(b, i) for i in range(30)]
    assert loaded.to_dict() == policy.to_dict()


def test_bad_inputs_are_rejected_with_clear_errors() -> None:
    answers, scores, labels = np.zeros((2, 4), dtype=int), np.full((2, 4), 0.5), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="scores shape"):
        train_policy(answers, scores[:, :3], labels, [[0.5], [0.5]])
    with pytest.raises(ValueError, match="finite"):
        train_policy(answers, np.full((2, 4), np.nan), labels, [[0.5], [0.5]])
    with pytest.raises(ValueError, match="unlabeled"):
        train_policy(answers, scores, np.array([0, -1, 0, 1]), [[0.5], [0.5]])
    with pytest.raises(ValueError, match="edges for 2 LLMs"):
        train_policy(answers, scores, labels, [[0.5]])
    with pytest.raises(ValueError, match="needs costs"):
        train_policy(answers, scores, labels, [[0.5], [0.5]], lam=1.0)
    with pytest.raises(TypeError, match="integer"):
        train_policy(answers.astype(float), scores, labels, [[0.5], [0.5]])
    policy = train_policy(answers, scores, labels, [[0.5], [0.5]])
    with pytest.raises(ValueError, match="returned answers"):
        policy.predict_staged(lambda k, idx: (np.zeros(1, dtype=int), np.zeros(1)), 4)
    with pytest.raises(ValueError, match="not a cascade policy"):
        CascadePolicy.from_dict({"format": "other"})
    bad = policy.to_dict()
    bad["strategies"] = ["llm0", "nonexistent"]
    with pytest.raises(KeyError, match="nonexistent"):
        CascadePolicy.from_dict(bad)


# ---------------------------------------------------------------------------------------------------------------
# Cost-aware training: the frontier and the budget mode, on synthetic scores


@pytest.fixture(scope="module")
def synthetic_task() -> dict[str, Any]:
    from ls_backend.confidence import confidence_scores
    from ls_backend.synthetic import make_synthetic_scores

    task = next(iter(make_synthetic_scores(n_tasks=1, n_items=1500, seed=7)))
    scores = np.stack([confidence_scores(task.logits[j], task.answers[j]) for j in range(len(task.llms))])
    edges = [np.quantile(scores[j], [0.2, 0.4, 0.6, 0.8]) for j in range(len(task.llms))]
    return {
        "answers": task.answers,
        "scores": scores,
        "labels": task.labels,
        "costs": task.costs,
        "edges": edges,
    }


def test_frontier_is_the_upper_envelope_of_all_lambdas(synthetic_task: dict[str, Any]) -> None:
    d = synthetic_task
    frontier = cost_frontier(d["answers"], d["scores"], d["labels"], d["edges"], d["costs"])
    assert len(frontier) >= 3
    costs = [p.cost_per_item for p in frontier]
    accuracies = [p.accuracy for p in frontier]
    assert costs == sorted(costs) and accuracies == sorted(accuracies)
    assert costs[0] == pytest.approx(d["costs"][0].mean())
    best = train_policy(d["answers"], d["scores"], d["labels"], d["edges"], costs=d["costs"])
    assert accuracies[-1] == best.metadata["train_accuracy"]
    n = d["answers"].shape[1]
    for lam in np.geomspace(1e-3, 3.0, 25):
        policy = train_policy(d["answers"], d["scores"], d["labels"], d["edges"], costs=d["costs"], lam=lam)
        hits, cost, _ = policy.training_totals()
        envelope = max(p.accuracy - lam * p.cost_per_item for p in frontier)
        assert hits / n - lam * cost / n <= envelope + 1e-9
    for point in frontier:  # each point is what training with its lambda gives
        assert point.policy.lam == point.lam


def test_budget_mode_is_the_most_accurate_affordable_policy(synthetic_task: dict[str, Any]) -> None:
    d = synthetic_task
    frontier = cost_frontier(d["answers"], d["scores"], d["labels"], d["edges"], d["costs"])
    budget = 0.5 * (frontier[0].cost_per_item + frontier[-1].cost_per_item)
    policy = train_within_budget(d["answers"], d["scores"], d["labels"], d["edges"], d["costs"], budget)
    assert policy.metadata["train_cost_per_item"] <= budget
    for lam in np.geomspace(1e-3, 3.0, 25):
        other = train_policy(d["answers"], d["scores"], d["labels"], d["edges"], costs=d["costs"], lam=lam)
        if other.metadata["train_cost_per_item"] <= budget:
            assert other.metadata["train_accuracy"] <= policy.metadata["train_accuracy"]
    with pytest.raises(ValueError, match="no policy costs at most"):
        train_within_budget(d["answers"], d["scores"], d["labels"], d["edges"], d["costs"], 0.01)


def test_cascade_on_synthetic_scores_beats_single_llms_in_training(synthetic_task: dict[str, Any]) -> None:
    d = synthetic_task
    policy = train_policy(d["answers"], d["scores"], d["labels"], d["edges"], costs=d["costs"])
    single = (d["answers"] == d["labels"]).mean(axis=1)
    assert policy.metadata["train_accuracy"] >= single.max()
    result = policy.predict(d["answers"], d["scores"])
    assert result.item_costs(d["costs"]).mean() == pytest.approx(policy.metadata["train_cost_per_item"])
