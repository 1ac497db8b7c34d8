"""The measuring parts of ``scripts/precision_guard.py`` (the comparison with fp32 and the verdict:
``ls_backend.benchmark.precision_guard``) and of ``scripts/bench_scoring.py`` (executed FLOPs and the CPU's peak:
``ls_backend.benchmark.flops``), on synthetic inputs and a tiny model."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ls_backend.benchmark import flops, precision_guard
from ls_backend.files import home_as_tilde
from tests.tiny_models import corpus_words, tiny_llama, tiny_word_tokenizer


@pytest.fixture(scope="module")
def guard() -> ModuleType:
    return precision_guard


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return flops


def task_scores(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    logits = np.stack([rng.normal(size=n) + (labels == 0), rng.normal(size=n)], axis=1) * 3
    return logits.argmax(axis=1), logits, labels


def test_identical_scores_change_nothing_and_pass(guard) -> None:
    answers, logits, labels = task_scores(0)
    row = guard.compare((answers, logits), (answers, logits.copy()), labels, ("yes", "no"))
    assert row["agreement"] == 1.0 and row["max_abs_logit_diff"] == 0.0
    assert row["auc_change"] == 0.0 and row["ace_change"] == 0.0 and row["calibrated_ace_change"] == 0.0
    assert 0.5 < row["auc_fp32"] < 1.0
    summary = guard.summarize({"a": row, "b": row}, 0.995, 0.005)
    assert summary["passes"] and summary["agreement"] == 1.0


def test_flipped_answers_and_a_worse_ranking_fail(guard) -> None:
    answers, logits, labels = task_scores(1)
    noisy = logits + np.random.default_rng(2).normal(scale=2.0, size=logits.shape)
    row = guard.compare((answers, logits), (noisy.argmax(axis=1), noisy), labels, ("yes", "no"))
    assert row["agreement"] < 0.95 and row["auc_change"] < 0
    assert row["max_abs_logit_diff"] >= row["mean_abs_logit_diff"] > 0
    same = guard.compare((answers, logits), (answers, logits), labels, ("yes", "no"))
    summary = guard.summarize({"a": row, "b": same}, 0.995, 0.005)
    assert not summary["passes"]
    assert summary["agreement"] == pytest.approx((row["agreement"] + 1) / 2)
    assert summary["max_task_abs_auc_change"] == pytest.approx(abs(row["auc_change"]))
    # one flipped answer in 400 items keeps the rule (99.75% >= 99.5%); three in 400 do not
    one = {**same, "n_items": 400, "agreement": 399 / 400}
    three = {**same, "n_items": 400, "agreement": 397 / 400}
    assert guard.summarize({"a": one}, 0.995, 0.005)["passes"]
    assert not guard.summarize({"a": three}, 0.995, 0.005)["passes"]


def test_calibration_halves_are_disjoint_and_stratified(guard) -> None:
    labels = np.array([0] * 30 + [1] * 30 + [2] * 10)
    a, b = guard.halves(labels, seed=0)
    assert set(a).isdisjoint(b) and len(a) + len(b) == labels.size
    assert [int((labels[a] == c).sum()) for c in range(3)] == [15, 15, 5]
    np.testing.assert_array_equal(a, guard.halves(labels, seed=0)[0])  # seeded: the same for every precision


def test_forward_flops_count_linear_attention_and_head(bench) -> None:
    tokenizer = tiny_word_tokenizer(corpus_words("a b c d e f g"))
    model = tiny_llama(
        tokenizer, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
    )
    # per layer: q 32x32, k and v 32x16 (2 of 4 heads), o 32x32, gate and up 32x64, down 64x32
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64
    assert bench.linear_weights(model) == 2 * per_layer
    vocab = model.config.vocab_size
    one = bench.forward_flops(model, [1], cached_prefix=0)
    assert one == 2 * 2 * per_layer + 4 * 2 * 4 * 8 * 1 + 2 * 32 * vocab
    # a cached prefix is not computed, but its keys still widen the attention of the tokens after it
    full, cached = bench.forward_flops(model, [10], 0), bench.forward_flops(model, [10], 6)
    assert cached == 2 * 2 * per_layer * 4 + 4 * 2 * 4 * 8 * (7 + 8 + 9 + 10) + 2 * 32 * vocab
    assert cached < full


def test_cpu_peak_follows_the_flags(bench, monkeypatch) -> None:
    monkeypatch.setattr(
        bench, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    )
    fp32 = bench.cpu_peak("float32", cores=2, ghz=2.5, fma_per_cycle=1)
    assert fp32 == 2 * 2.5e9 * 1 * 16 * 2
    assert bench.cpu_peak("bfloat16", 2, 2.5, 1) == 2 * fp32 and bench.cpu_peak("int8", 2, 2.5, 1) == 4 * fp32
    monkeypatch.setattr(bench, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert bench.cpu_peak("bfloat16", 2, 2.5, 1) == fp32  # no native bf16 dot product: fp32 lanes
    monkeypatch.setattr(bench, "cpu_flags", lambda: frozenset({"avx2"}))
    assert bench.cpu_peak("float32", 2, 2.5, 2) == fp32  # 256-bit vectors, two FMA pipes


def test_recorded_commands_name_the_home_folder_as_tilde() -> None:
    home = Path.home()
    assert home_as_tilde(str(home / ".cache" / "scores.sqlite")) == "~/.cache/scores.sqlite"
    assert home_as_tilde(str(home)) == "~"
    assert home_as_tilde(str(home) + "-other") == str(home) + "-other"  # only the folder itself
    assert home_as_tilde("--precisions") == "--precisions"
