"""The student in the learning loop and the server: a retrain fits it as member 0 (held to the same promotion
guard), the version stores it as plain data, /predict embeds the batch (through the embedding cache) and asks the
LLMs only about what the policy sends on. Embeddings here come from a stand-in embedder (vectors that carry the
label, plus noise), so that what the student learns is known; the real all-MiniLM-L6-v2 student is measured in
tests/test_student.py and in the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ls_backend.calibration import make_calibrator
from ls_backend.ensemble import GO_DEEPER
from ls_backend.loop import LabelStore, LoopConfig, ServingModel, VersionStore, retrain, threshold_policy
from ls_backend.loop.simulation import SyntheticProject, synthetic_project
from ls_backend.server.predictor import EMBEDDING_CACHE_FILE, CascadePredictor
from ls_backend.student import NAME, EmbeddingStudent
from tests.conftest import TINY_LLM_NAMES
from tests.test_loop_versions import FAST, initial_model, label_all
from tests.test_server_oot import BINARY, TEXTS, CountingBuilder, config_for, project


def informative_embedder(project: SyntheticProject, noise: float = 0.5, seed: int = 0):
    """``embed_fn`` whose vectors carry each text's true label (so a student trained on them is accurate)."""
    rng = np.random.default_rng(seed)
    table = np.zeros((len(project.texts), 8))
    table[np.arange(len(project.texts)), project.labels] = 2.0
    table += noise * rng.standard_normal(table.shape)
    calls: list[int] = []

    def embed(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(texts))
        return table[project.index_of(texts)], np.full(len(texts), 0.002)

    embed.calls = calls  # type: ignore[attr-defined]
    return embed


@pytest.fixture
def project_() -> SyntheticProject:
    return synthetic_project(600, seed=2)


@pytest.fixture
def stores(tmp_path: Path, project_: SyntheticProject) -> tuple[LabelStore, VersionStore]:
    versions = VersionStore(tmp_path / "models", 1)
    versions.ensure_initial(initial_model(project_))
    return LabelStore(tmp_path / "labels.db"), versions


def test_a_retrain_with_embeddings_adds_the_student_as_member_zero(stores, project_) -> None:
    store, versions = stores
    label_all(store, project_, range(400))
    embed = informative_embedder(project_)
    result = retrain(1, store, versions, project_.score_fn, FAST, embed_fn=embed)
    assert result.status == "promoted", result.reason
    version = versions.serving()
    model = version.model
    assert model.llms == (NAME, *project_.llms) and model.llm_names == project_.llms
    assert isinstance(model.student, EmbeddingStudent)
    assert version.metrics["student"]["n_labels"] == version.labels["n_train"]
    # the student (accurate on these embeddings) lifts the held-out accuracy above the LLM-only version's
    evaluation = version.evaluation
    assert evaluation["candidate"]["accuracy"] > evaluation["serving"]["accuracy"] + 0.05
    # plain data: the version file is JSON and loads back with the same student
    stored = json.loads(versions.path_of(version.name).read_text())
    assert stored["model"]["student"]["format"] == "lwc-embedding-student"
    again = ServingModel.from_dict(stored["model"])
    vectors = embed(project_.texts[:20])[0]
    np.testing.assert_allclose(again.student.logits(vectors), model.student.logits(vectors))
    # a serving version with a student cannot be judged without embeddings: the retrain says so
    label_all(store, project_, range(400, 450))
    failed = retrain(1, store, versions, project_.score_fn, FAST)
    assert failed.status == "failed" and "embed_fn" in failed.reason


def test_without_enough_labels_or_switched_off_there_is_no_student(stores, project_) -> None:
    store, versions = stores
    label_all(store, project_, range(400))
    off = LoopConfig(**{**FAST.to_dict(), "student": False})
    result = retrain(1, store, versions, project_.score_fn, off, embed_fn=informative_embedder(project_))
    assert versions.load(result.version).model.student is None
    few = LoopConfig(**{**FAST.to_dict(), "student_min_labels": 10_000})
    result = retrain(
        1, store, versions, project_.score_fn, few, embed_fn=informative_embedder(project_), force=True
    )
    assert versions.load(result.version).model.student is None


def test_a_served_student_answers_first_and_the_llms_see_only_the_rest(
    tiny_llm_dirs: list[Path], oot_table: Path, tmp_path: Path
) -> None:
    config = config_for(tiny_llm_dirs, oot_table, tmp_path)
    rng = np.random.default_rng(0)
    vectors = {text: rng.standard_normal(6) for text in TEXTS}
    embedded: list[str] = []

    def embed(texts):
        embedded.extend(texts)
        return np.stack([vectors[t] for t in texts])

    labels = np.arange(len(TEXTS)) % 2
    student = EmbeddingStudent(2).fit(np.stack([vectors[t] for t in TEXTS]), labels)
    members = (NAME, *TINY_LLM_NAMES)
    policy = threshold_policy(members, BINARY.class_words)
    # the student answers in its upper score bins, the rest goes on to the LLMs
    n_bins = policy.actions[0].shape[0]
    policy.actions[0][:] = GO_DEEPER
    policy.actions[0][n_bins // 2 :] = policy.strategies.index("llm0")

    class Version:
        name = "v0002-student"
        model = ServingModel(
            members, BINARY.class_words, [make_calibrator("none") for _ in members], policy, "llm", student
        )

    builder = CountingBuilder()
    predictor = CascadePredictor(build_llm=builder, embed=embed, model_source=lambda p: Version())
    setup = project(config, source="default")
    assert predictor.model_version(setup) == "v0002-student"
    predictions = predictor.predict(setup, TEXTS)
    by_student = [p for p in predictions if p.llms_asked == [NAME]]
    deeper = [p for p in predictions if len(p.llms_asked) > 1]
    assert by_student and deeper and len(by_student) + len(deeper) == len(TEXTS)
    assert all(p.llms_asked[0] == NAME for p in predictions)
    assert builder.texts.get("tiny-a", 0) == len(deeper)  # the LLMs saw only what the student passed on
    assert sorted(embedded) == sorted(set(TEXTS))
    assert (tmp_path / EMBEDDING_CACHE_FILE).exists()
    # a new server process on the same model dir: the embeddings come from the cache
    embedded.clear()
    again = CascadePredictor(build_llm=CountingBuilder(), embed=embed, model_source=lambda p: Version())
    repeated = again.predict(setup, TEXTS)
    assert embedded == [] and [p.choice for p in repeated] == [p.choice for p in predictions]
    # the cache keeps float32 vectors, so scores agree to float32's precision
    assert [p.score for p in repeated] == pytest.approx([p.score for p in predictions], abs=1e-6)
    assert all(p.llm_called[0] is False for p in repeated if p.llm_called)
