"""Precision of the Hugging Face adapter on tiny random-weight models: bf16 with an fp32 output head, int8
dynamic quantization, what ``auto`` resolves to, and the revision (the score-cache key) that names the
precision, as the server predicts it without loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ls_backend.confidence import CLASS_MATCHING_RULE
from ls_backend.llms import PromptTemplate, hf
from ls_backend.llms.config import parse_llm_configs, predicted_precision
from ls_backend.llms.hf import (
    HFLLM,
    Float32Head,
    hf_revision,
    load_model_and_tokenizer,
    model_precision,
    native_bf16,
    resolve_precision,
    set_precision,
)
from ls_backend.llms.packaged import PACKAGED_MODELS, packaged_precision
from ls_backend.server.predictor import _predicted_revision
from tests.tiny_models import corpus_words, tiny_llama, tiny_word_tokenizer

torch.set_num_threads(1)

CORPUS = (
    "Is this message spam ? Text : Answer with one of yes , no . Answer Yes No win a free prize now call "
    "claim your reward today see you at lunch the meeting moved to three ok thanks mom dinner is ready"
)
TEXTS = [
    "win a free prize now",
    "see you at lunch",
    "claim your reward today now call",
    "ok",
    "the meeting moved to three thanks mom dinner is ready",
    "call now",
]
PROMPT = PromptTemplate(
    "Is this message spam ?",
    ("yes", "no"),
    examples=(("win a free prize now", "yes"), ("see you at lunch", "no")),
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_word_tokenizer(corpus_words(CORPUS))


def fresh_model(tokenizer):
    return tiny_llama(tokenizer, hidden_size=64, intermediate_size=128, lm_head_scale=20)


@pytest.fixture(scope="module")
def fp32_logits(tokenizer) -> np.ndarray:
    return HFLLM(fresh_model(tokenizer), tokenizer, "tiny", prefix_cache=False).score(TEXTS, PROMPT).logits


@pytest.fixture
def bf16_native(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hf, "native_bf16", lambda device="cpu": True)


def test_auto_picks_bf16_only_where_native_and_guarded(monkeypatch) -> None:
    monkeypatch.setattr(hf, "native_bf16", lambda device="cpu": True)
    assert resolve_precision("auto", "cpu", ("float32", "bfloat16")) == "bfloat16"
    assert resolve_precision("auto", "cpu", ("float32",)) == "float32"  # bf16 not measured to be good enough
    assert resolve_precision("auto") == "float32"  # an unmeasured model: fp32
    monkeypatch.setattr(hf, "native_bf16", lambda device="cpu": False)
    assert resolve_precision("auto", "cpu", ("float32", "bfloat16")) == "float32"  # bf16 would be emulated
    assert resolve_precision("int8", "cpu") == "int8"  # explicit precisions are taken as they are
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_precision("fp8")
    with pytest.raises(ValueError, match="auto_dtypes"):
        resolve_precision("auto", "cpu", ("float32", "bf16"))


def test_native_bf16_reads_torch_then_the_cpu_flags(monkeypatch) -> None:
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(hf.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hf, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert not native_bf16("cpu")  # AVX-512 without its BF16 extension (Cascade Lake): emulated
    monkeypatch.setattr(hf, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert native_bf16("cpu")
    monkeypatch.setattr(hf, "cpu_flags", lambda: frozenset({"bf16"}))
    assert not native_bf16("cpu")  # "bf16" is Arm's flag, not x86's
    monkeypatch.setattr(hf.platform, "machine", lambda: "aarch64")
    assert native_bf16("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(hf, "cpu_flags", lambda: frozenset())
    assert native_bf16("cpu")
    assert not native_bf16("mps")
    if not torch.cuda.is_available():
        assert not native_bf16("cuda")


def test_bf16_keeps_an_fp32_head_and_scores_close_to_fp32(tokenizer, fp32_logits) -> None:
    model = set_precision(fresh_model(tokenizer), "bfloat16")
    head = model.get_output_embeddings()
    assert isinstance(head, Float32Head) and head.weight.dtype == torch.float32
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    llm = HFLLM(model, tokenizer, "tiny", prefix_cache=False)
    assert llm.precision == "bfloat16" and llm.describe()["precision"] == "bfloat16"
    logits = llm.score(TEXTS, PROMPT).logits
    assert logits.dtype == np.float64
    difference = np.abs(logits - fp32_logits).max()
    assert 0 < difference < 0.05 * np.abs(fp32_logits).max()  # rounded, not broken
    # the head really is fp32: logits are not confined to bf16's grid (spacing 2**-3 between 16 and 32)
    spacing = 2.0 ** (np.floor(np.log2(np.abs(logits))) - 7)
    assert not np.allclose(logits / spacing, np.round(logits / spacing))


def test_bf16_prefix_cache_passes_its_check(tokenizer) -> None:
    model = set_precision(fresh_model(tokenizer), "bfloat16")
    cached = HFLLM(model, tokenizer, "tiny", batch_size=3, prefix_cache=True)
    plain = HFLLM(model, tokenizer, "tiny", batch_size=3, prefix_cache=False)
    with_cache = cached.score(TEXTS, PROMPT)
    assert with_cache.meta["shared_prefix_tokens"] >= 8 and cached.prefix_cache
    np.testing.assert_allclose(with_cache.logits, plain.score(TEXTS, PROMPT).logits, atol=0.1, rtol=0)


def test_int8_quantizes_every_linear_layer_but_the_head(tokenizer, fp32_logits) -> None:
    model = set_precision(fresh_model(tokenizer), "int8")
    dynamic = hf._dynamic_linear_type()
    quantized = [n for n, m in model.named_modules() if isinstance(m, dynamic)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    llm = HFLLM(model, tokenizer, "tiny", prefix_cache=False)
    assert llm.precision == "int8" and llm.revision.endswith("|int8")
    logits = llm.score(TEXTS, PROMPT).logits
    assert np.isfinite(logits).all() and not np.array_equal(logits, fp32_logits)
    # quantized, so not equal, but the same model: far closer to its fp32 scores than another model is
    other = tiny_llama(tokenizer, seed=1, hidden_size=64, intermediate_size=128, lm_head_scale=20)
    unrelated = HFLLM(other, tokenizer, "other", prefix_cache=False).score(TEXTS, PROMPT).logits
    assert np.abs(logits - fp32_logits).max() < 0.5 * np.abs(unrelated - fp32_logits).max()


def test_revision_names_the_precision_and_fp32_keeps_the_old_one(tokenizer) -> None:
    fp32 = HFLLM(fresh_model(tokenizer), tokenizer, "tiny", revision="abc")
    assert fp32.precision == "float32" and fp32.revision == f"abc|{CLASS_MATCHING_RULE}"  # cached scores stay
    bf16 = HFLLM(set_precision(fresh_model(tokenizer), "bfloat16"), tokenizer, "tiny", revision="abc")
    assert bf16.revision == f"abc|{CLASS_MATCHING_RULE}|bfloat16"
    rounded = HFLLM(fresh_model(tokenizer).to(torch.bfloat16), tokenizer, "tiny", revision="abc")
    assert rounded.precision == "bfloat16-logits"  # a bf16 head: its logits are rounded, a different key
    assert len({fp32.revision, bf16.revision, rounded.revision}) == 3
    assert hf_revision("", "float32") == CLASS_MATCHING_RULE
    assert model_precision(set_precision(fresh_model(tokenizer), "float16")) == "float16"


def test_loader_resolves_auto_and_the_server_predicts_the_revision(tmp_path, tokenizer, bf16_native) -> None:
    folder = tmp_path / "tiny"
    fresh_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    revisions = {}
    for options in (
        {},
        {"dtype": "bfloat16"},
        {"dtype": "int8"},
        {"dtype": "auto"},  # an unmeasured model: fp32
        {"dtype": "auto", "auto_dtypes": ["float32", "bfloat16"]},
    ):
        (entry,) = parse_llm_configs([{"name": "tiny", "kind": "hf", "model": str(folder), **options}])
        llm = entry.build()
        assert isinstance(llm, HFLLM)
        assert llm.precision == predicted_precision("hf", entry.options)
        assert llm.revision == _predicted_revision(entry)  # predicted without loading
        revisions[str(options)] = llm.revision
    assert revisions["{}"] == revisions["{'dtype': 'auto'}"]
    assert (
        revisions["{'dtype': 'bfloat16'}"]
        == revisions["{'dtype': 'auto', 'auto_dtypes': ['float32', 'bfloat16']}"]
    )
    assert len(set(revisions.values())) == 3
    model, _ = load_model_and_tokenizer(str(folder), dtype=torch.float16)  # a torch dtype: loaded as is
    assert model_precision(model) == "float16-logits"
    with pytest.raises(ValueError, match="CPU only"):
        load_model_and_tokenizer(str(folder), device="cuda", dtype="int8")


def test_packaged_auto_follows_the_guard(monkeypatch, bf16_native) -> None:
    name = "smollm2-135m-instruct"
    unguarded = dataclasses.replace(PACKAGED_MODELS[name], auto_dtypes=("float32",))
    monkeypatch.setitem(PACKAGED_MODELS, name, unguarded)
    assert packaged_precision(name) == "float32"
    guarded = dataclasses.replace(PACKAGED_MODELS[name], auto_dtypes=("float32", "bfloat16"))
    monkeypatch.setitem(PACKAGED_MODELS, name, guarded)
    assert packaged_precision(name) == "bfloat16" and packaged_precision(name, dtype="float32") == "float32"
    (entry,) = parse_llm_configs([{"name": "s", "kind": "packaged", "model": name}])
    assert predicted_precision("packaged", entry.options) == "bfloat16"
    assert _predicted_revision(entry) == f"{guarded.sha256}|{CLASS_MATCHING_RULE}|bfloat16"
    (pinned,) = parse_llm_configs([{"name": "s", "kind": "packaged", "model": name, "dtype": "float32"}])
    assert _predicted_revision(pinned) == f"{guarded.sha256}|{CLASS_MATCHING_RULE}"
    assert predicted_precision("bedrock", {"model_id": "x"}) is None
