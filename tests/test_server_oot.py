"""The cascade predictor and its out-of-task model: plans and versions, calibrators fitted on other tasks (checked
against a plain reference), SIM-OOT with the real sentence-embedding model, the default rule, the model cache,
staged scoring through the score cache with tiny real LLMs, and a learning-loop version plugged in at run time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.calibration import CONTENT_FREE_TEXTS, make_calibrator
from ls_backend.confidence import softmax
from ls_backend.ensemble import GO_DEEPER
from ls_backend.labelstudio import parse_label_config
from ls_backend.loop.model import ServingModel, threshold_policy
from ls_backend.scores import read_scores
from ls_backend.server.config import BackendConfig, CascadeSettings
from ls_backend.server.oot import (
    OOTModelCache,
    OOTScores,
    build_oot_model,
    default_rule_policy,
    load_oot_scores,
    plan_oot_model,
)
from ls_backend.server.predictor import CascadePredictor, ProjectSetup
from tests.conftest import REPO_ROOT, TINY_LLM_NAMES

torch.set_num_threads(1)

BINARY = parse_label_config((REPO_ROOT / "label_config" / "binary_yes_no.xml").read_text())
TOPICS = parse_label_config((REPO_ROOT / "label_config" / "multiclass.xml").read_text())
LLMS = [(name, f"rev-{name}") for name in TINY_LLM_NAMES]


@pytest.fixture(scope="module")
def scores(oot_table: Path) -> OOTScores:
    loaded = load_oot_scores(oot_table, oot_table.parent / "tasks.yaml")
    assert loaded is not None
    return loaded


def config_for(tiny_llm_dirs: list[Path], oot_table: Path, model_dir: Path, **extra: Any) -> BackendConfig:
    return BackendConfig.from_mapping(
        {
            "llms": [
                {"name": name, "kind": "hf", "model": str(folder), "batch_size": 32}
                for name, folder in zip(TINY_LLM_NAMES, tiny_llm_dirs, strict=True)
            ],
            "model_dir": str(model_dir),
            "oot_scores": str(oot_table),
            **extra,
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# plans and versions


def test_plans_name_their_kind_and_change_only_with_what_they_depend_on(scores: OOTScores) -> None:
    defaults = CascadeSettings()
    every = plan_oot_model(scores, LLMS, ("yes", "no"), None, defaults)
    assert every.kind == "oot-all" and every.version.startswith("oot-all-") and len(every.common) == 9
    similar = plan_oot_model(scores, LLMS, ("yes", "no"), "Is this SMS spam?", defaults)
    assert similar.kind == "oot-sim" and similar.question == "Is this SMS spam?"
    assert plan_oot_model(scores, LLMS, ("yes", "no"), "Is this SMS spam?", defaults) == similar
    assert plan_oot_model(scores, LLMS, ("yes", "no"), "Is it a review?", defaults).version != similar.version
    off = CascadeSettings(similar_tasks=False)
    assert plan_oot_model(scores, LLMS, ("yes", "no"), "Is this SMS spam?", off).kind == "oot-all"
    # the class order of the project does not matter for eligibility
    assert plan_oot_model(scores, LLMS, ("No", "Yes"), None, defaults).kind == "oot-all"
    other_revision = [(name, "other") for name, _ in LLMS]
    assert plan_oot_model(scores, other_revision, ("yes", "no"), None, defaults).version != every.version
    # no task with these classes, no LLM of that name, no table: the default rule
    assert plan_oot_model(scores, LLMS, TOPICS.class_words, "topic?", defaults).kind == "default-rule"
    unknown = plan_oot_model(scores, [("gpt-x", "r")], ("yes", "no"), None, defaults)
    assert unknown.kind == "default-rule" and unknown.eligible == ((),)
    assert plan_oot_model(None, LLMS, ("yes", "no"), "q?", defaults).kind == "default-rule"
    partial = plan_oot_model(scores, [LLMS[0], ("gpt-x", "r")], ("yes", "no"), None, defaults)
    assert partial.kind == "default-rule" and len(partial.eligible[0]) == 9 and partial.eligible[1] == ()


def test_a_missing_or_broken_table_means_no_scores(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert load_oot_scores(tmp_path / "absent.jsonl.gz") is None
    assert "no out-of-task scores" in caplog.text
    (tmp_path / "broken.jsonl").write_text('{"task": 1}\n')
    assert load_oot_scores(tmp_path / "broken.jsonl") is None


# ---------------------------------------------------------------------------------------------------------------
# fitting


def reference_pool(
    path: Path, tasks: list[str], llm: str, classes: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Labeled logits and labels of ``llm`` on ``tasks``, class columns put in ``classes`` order, item by item."""
    table = read_scores(path)
    logits, labels = [], []
    for name in tasks:
        task = table[name]
        j = task.llm_index(llm)
        for i in range(task.n_items):
            if task.labels[i] < 0:
                continue
            row = {task.classes[c]: task.logits[j, i, c] for c in range(len(task.classes))}
            logits.append([row[c] for c in classes])
            labels.append(classes.index(task.classes[task.labels[i]]))
    return np.array(logits), np.array(labels)


@pytest.mark.parametrize("classes", [("yes", "no"), ("no", "yes")])
def test_all_oot_calibrators_and_policy(scores: OOTScores, oot_table: Path, classes: tuple[str, str]) -> None:
    plan = plan_oot_model(scores, LLMS, classes, None, CascadeSettings())
    model = build_oot_model(plan, scores)
    assert model.kind == "oot-all" and model.version == plan.version
    for k, (name, _) in enumerate(LLMS):
        logits, labels = reference_pool(oot_table, list(plan.common), name, classes)
        reference = make_calibrator("ST").fit(logits, labels)
        assert model.model.calibrators[k].a_ == pytest.approx(reference.a_, rel=1e-6)
        assert model.sources[name] == list(plan.common)
    policy = model.model.policy
    assert policy.llms == TINY_LLM_NAMES and policy.classes == classes and policy.lam == 0.0
    assert [len(e) for e in policy.edges] == [4, 4]  # 5 quantile bins per LLM
    assert policy.metadata["n_train"] == 9 * 200
    # the synthetic LLMs are over-confident: temperature scaling cools them (a < 1)
    assert all(c.a_ < 1 for c in model.model.calibrators)


def test_sim_oot_picks_the_similar_tasks_with_the_real_embedding_model(scores: OOTScores) -> None:
    plan = plan_oot_model(scores, LLMS, ("yes", "no"), "Is this SMS message spam?", CascadeSettings())
    model = build_oot_model(plan, scores)  # embeds with all-MiniLM-L6-v2 from the installed package
    assert model.kind == "oot-sim"
    assert sorted(model.sources["policy"]) == ["spam_0", "spam_1", "spam_2"]
    assert all(sorted(model.sources[name]) == ["spam_0", "spam_1", "spam_2"] for name in TINY_LLM_NAMES)


def test_no_scores_give_identity_calibrators_and_the_default_rule(scores: OOTScores) -> None:
    plan = plan_oot_model(scores, [LLMS[0], ("gpt-x", "r")], ("yes", "no"), None, CascadeSettings())
    model = build_oot_model(plan, scores)
    assert model.version.startswith("default-rule-")
    assert model.model.calibrators[0].name == "ST" and model.model.calibrators[1].name == "none"
    assert any("gpt-x: identity calibrator" in note for note in model.notes)
    assert model.model.policy.metadata["kind"] == "default-rule"


def reference_rule(
    scores: np.ndarray, answers: np.ndarray, threshold: float, n_classes: int
) -> tuple[int, int]:
    """(depth, answer) of one item under the default rule, written out plainly."""
    n_llms = scores.shape[0]
    for k in range(n_llms - 1):
        if scores[k] >= threshold:
            return k + 1, int(answers[k])
    if n_llms == 1:
        return 1, int(answers[0])
    totals = np.zeros(n_classes)
    latest = np.full(n_classes, -1)
    for j in range(n_llms):
        totals[answers[j]] += scores[j]
        latest[answers[j]] = j
    best = max(range(n_classes), key=lambda c: (totals[c], latest[c]))
    return n_llms, best


@settings(max_examples=60, deadline=None)
@given(
    n_llms=st.integers(1, 3),
    threshold=st.floats(0.05, 1.0),
    data=st.data(),
)
def test_default_rule_matches_a_plain_reference(n_llms: int, threshold: float, data: st.DataObject) -> None:
    n_items, n_classes = 12, 3
    scores = np.array(
        data.draw(st.lists(st.floats(0, 1), min_size=n_llms * n_items, max_size=n_llms * n_items))
    )
    scores = scores.reshape(n_llms, n_items)
    answers = np.array(
        data.draw(st.lists(st.integers(0, 2), min_size=n_llms * n_items, max_size=n_llms * n_items))
    ).reshape(n_llms, n_items)
    policy = default_rule_policy([f"m{j}" for j in range(n_llms)], ["a", "b", "c"], threshold)
    result = policy.predict(answers, scores)
    for i in range(n_items):
        depth, answer = reference_rule(scores[:, i], answers[:, i], threshold, n_classes)
        assert (int(result.depth[i]), int(result.predictions[i])) == (depth, answer)


@pytest.fixture(scope="module")
def all_oot_model(scores: OOTScores) -> ServingModel:
    return build_oot_model(plan_oot_model(scores, LLMS, ("yes", "no"), None, CascadeSettings()), scores).model


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_served_scores_are_calibrated_probabilities_of_the_final_class(
    all_oot_model: ServingModel, seed: int
) -> None:
    model = all_oot_model
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(2, 30, 2))
    answers = logits.argmax(axis=-1)
    served = model.predict(logits, answers)
    assert np.all((served.scores >= 0) & (served.scores <= 1))
    probs = np.stack([softmax(model.calibrators[k].transform(logits[k])) for k in range(2)])
    for i in range(30):
        decision = model.policy.strategies[int(served.cascade.actions[served.depth[i] - 1, i])]
        final = served.predictions[i]
        asked = probs[: served.depth[i], i, final]
        # a vote's score: the mean over its supporters (the LLMs asked that answered the final class)
        supporters = served.cascade.answers[: served.depth[i], i] == final
        expected = (
            probs[int(decision[3:]), i, final] if decision.startswith("llm") else asked[supporters].mean()
        )
        assert served.scores[i] == pytest.approx(expected)


def test_the_model_cache_fits_once_and_reads_the_file_after_a_restart(
    scores: OOTScores, tmp_path: Path
) -> None:
    plan = plan_oot_model(scores, LLMS, ("yes", "no"), None, CascadeSettings())
    built = []

    def build() -> Any:
        built.append(1)
        return build_oot_model(plan, scores)

    first = OOTModelCache(tmp_path).get(plan, build)
    assert OOTModelCache(tmp_path).get(plan, build).model.to_dict() == first.model.to_dict()  # a new process
    assert built == [1] and (tmp_path / f"{plan.version}.json").exists()
    (tmp_path / f"{plan.version}.json").write_text("{not json")
    OOTModelCache(tmp_path).get(plan, build)  # a damaged file is fitted again
    assert built == [1, 1]


# ---------------------------------------------------------------------------------------------------------------
# the predictor with real tiny LLMs


class CountingBuilder:
    """Builds LLMs from config entries, wrapping each so that the texts it scores are counted per LLM."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}
        self.built: list[str] = []

    def __call__(self, entry: Any) -> Any:
        from ls_backend.server.predictor import _build_from_config

        llm = _build_from_config(entry)
        self.built.append(llm.name)
        original = llm.score

        def score(texts: Any, prompt: Any) -> Any:
            self.texts[llm.name] = self.texts.get(llm.name, 0) + len(texts)
            return original(texts, prompt)

        llm.score = score  # type: ignore[method-assign]
        return llm


TEXTS = [
    "win a free prize now",
    "see you at lunch",
    "the match ended in a draw",
    "shares fell today",
    "call now",
    "new phone",
    "film star",
    "election",
]


def project(
    config: BackendConfig, question: str = "Is this message spam ?", source: str = "config"
) -> ProjectSetup:
    return ProjectSetup("1.1795875050", BINARY, config, question, source)


def test_costly_llms_see_only_the_items_the_policy_sends_on(
    tiny_llm_dirs: list[Path], oot_table: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_llm_dirs, oot_table, tmp_path)
    builder = CountingBuilder()
    predictor = CascadePredictor(build_llm=builder)
    setup = project(config, source="default")  # no description: ALL-OOT, no embedding model needed
    # a policy that answers with the cheap LLM on part of the score range (its training data says so)
    predictions = predictor.predict(setup, TEXTS)
    assert [p.model_version for p in predictions] == [predictor.model_version(setup)] * len(TEXTS)
    assert predictions[0].model_version.startswith("oot-all-")
    deeper = sum(len(p.llms_asked) == 2 for p in predictions)
    # the default correction (CC) has every LLM score the content-free inputs once, at the project's first predict
    cf = len(CONTENT_FREE_TEXTS) if setup.config.cascade_settings.correction != "none" else 0
    assert builder.texts["tiny-a"] == len(TEXTS) + cf and builder.texts.get("tiny-b", 0) == deeper + cf
    for p in predictions:
        assert p.choice in BINARY.choices and p.score is not None and 0.0 <= p.score <= 1.0
        assert p.llms_asked == list(TINY_LLM_NAMES[: len(p.llms_asked)])
        assert p.llm_called == (True,) * len(p.llms_asked) and p.cost == pytest.approx(sum(p.llm_costs or ()))
        assert p.trace is not None and p.trace["decision"] in predictor.served(setup).model.policy.strategies
    # asked again (also by a new server process on the same model dir): every output from the score cache, so
    # no LLM is even loaded
    fresh = CountingBuilder()
    again = CascadePredictor(build_llm=fresh).predict(setup, TEXTS)
    assert fresh.built == [] and [(p.choice, p.score) for p in again] == [
        (p.choice, p.score) for p in predictions
    ]
    assert all(p.llm_called == (False,) * len(p.llms_asked) for p in again)


def test_duplicates_in_a_batch_are_sent_once(
    tiny_llm_dirs: list[Path], oot_table: Path, tmp_path: Path
) -> None:
    builder = CountingBuilder()
    setup = project(config_for(tiny_llm_dirs, oot_table, tmp_path), source="default")
    predictions = CascadePredictor(build_llm=builder).predict(setup, ["call now"] * 5)
    cf = len(CONTENT_FREE_TEXTS) if setup.config.cascade_settings.correction != "none" else 0
    assert builder.texts["tiny-a"] == 1 + cf
    assert [p.llm_called[0] for p in predictions if p.llm_called] == [True, False, False, False, False]


def test_a_plugged_version_replaces_the_default_at_run_time(
    tiny_llm_dirs: list[Path], oot_table: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for(tiny_llm_dirs, oot_table, tmp_path)

    class Version:
        def __init__(self, name: str, model: ServingModel) -> None:
            self.name, self.model = name, model

    serving: dict[str, Version] = {}
    builder = CountingBuilder()
    predictor = CascadePredictor(build_llm=builder, model_source=lambda p: serving.get(p.project_id))
    setup = project(config, source="default")
    default = predictor.model_version(setup)
    # the loop promotes a version whose policy always answers with the cheap LLM
    cheap_only = threshold_policy(TINY_LLM_NAMES, BINARY.class_words)
    cheap_only.actions[0][:] = cheap_only.strategies.index("llm0")
    assert (cheap_only.actions[0] != GO_DEEPER).all()
    serving[setup.project_id] = Version("v0002-20261128T153012Z", ServingModel.out_of_task(
        TINY_LLM_NAMES, BINARY.class_words, policy=cheap_only))  # fmt: skip
    assert predictor.model_version(setup) == "v0002-20261128T153012Z"
    predictions = predictor.predict(setup, TEXTS)
    assert {p.model_version for p in predictions} == {"v0002-20261128T153012Z"}
    assert all(p.llms_asked == ["tiny-a"] for p in predictions) and "tiny-b" not in builder.texts
    # a version for other LLMs cannot serve this configuration: the default serves, and the log says why
    serving[setup.project_id] = Version("v0003-x", ServingModel.out_of_task(("x", "y"), BINARY.class_words))
    with caplog.at_level(logging.WARNING):
        assert predictor.model_version(setup) == default
    assert "v0003-x is for LLMs ['x', 'y']" in caplog.text
