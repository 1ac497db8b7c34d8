"""The Hugging Face adapter on tiny random-weight models: batched, padded, prefix-cached and generated class
logits against unbatched, unpadded references; the config builder."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from ls_backend.confidence import class_token_ids
from ls_backend.llms import CostModel, PromptError, PromptTemplate
from ls_backend.llms.config import LLMConfigError, build_llms, parse_llm_configs
from ls_backend.llms.hf import HFLLM
from ls_backend.llms.packaged import PACKAGED_MODELS
from tests.tiny_models import corpus_words, tiny_llama, tiny_word_tokenizer

torch.set_num_threads(1)

CORPUS = (
    "Is this message spam ? Text : Answer with one of yes , no . Answer Yes No YES NO maybe "
    "win a free prize now call claim your reward today see you at lunch the meeting moved to three "
    "ok thanks mom dinner is ready urgent account blocked click here hello how are you doing fine "
    "system you label short texts user assistant"
)
TEXTS = [
    "win a free prize now",
    "see you at lunch",
    "urgent account blocked click here now call today",
    "ok",
    "the meeting moved to three thanks mom dinner is ready",
    "hello how are you doing",
    "claim your reward",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    return tiny_word_tokenizer(corpus_words(CORPUS), chat_template=CHAT_TEMPLATE if chat else None)


def make_causal(tokenizer: PreTrainedTokenizerFast, attn: str = "sdpa") -> LlamaForCausalLM:
    return tiny_llama(tokenizer, lm_head_scale=20, attn_implementation=attn)


def make_seq2seq(kind: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "t5":
        t5 = T5Config(
            vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            pad_token_id=0, eos_token_id=3, decoder_start_token_id=0,
        )  # fmt: skip
        return T5ForConditionalGeneration(t5).eval()
    bart = BartConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=None,
    )  # fmt: skip
    return BartForConditionalGeneration(bart).eval()


def reference_logits(llm: HFLLM, texts: list[str], prompt: PromptTemplate) -> np.ndarray:
    """Class logits from one unbatched, unpadded forward pass per text."""
    ids_per_class = class_token_ids(llm.tokenizer, prompt.classes)
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([llm.encode(prompt, text)])
            if llm.is_seq2seq:
                start = torch.tensor([[llm.decoder_start_id]])
                token_logits = llm.model(input_ids=ids, decoder_input_ids=start).logits[0, 0]
            else:
                token_logits = llm.model(input_ids=ids).logits[0, -1]
            rows.append([float(token_logits[c].max()) for c in ids_per_class])
    return np.array(rows)


def reference_generate(
    llm: HFLLM, texts: list[str], prompt: PromptTemplate, steps: int, eos: int
) -> tuple[np.ndarray, list[int]]:
    """Class logits of the generate method by a manual greedy loop per text (max over steps up to EOS), and
    the number of steps each text took."""
    ids_per_class = class_token_ids(llm.tokenizer, prompt.classes)
    rows, taken = [], []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([llm.encode(prompt, text)])
            decoder = torch.tensor([[llm.decoder_start_id]]) if llm.is_seq2seq else None
            best = np.full(len(ids_per_class), -np.inf)
            step_no = 0
            while step_no < steps:
                step_no += 1
                if llm.is_seq2seq:
                    step = llm.model(input_ids=ids, decoder_input_ids=decoder).logits[0, -1]
                else:
                    step = llm.model(input_ids=ids).logits[0, -1]
                best = np.maximum(best, [float(step[c].max()) for c in ids_per_class])
                token = int(step.argmax())
                if llm.is_seq2seq:
                    decoder = torch.cat([decoder, torch.tensor([[token]])], dim=1)
                else:
                    ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
                if token == eos:
                    break
            rows.append(best)
            taken.append(step_no)
    return np.array(rows), taken


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer(chat=True)


@pytest.fixture(scope="module")
def causal(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_causal(tokenizer)


PROMPT = PromptTemplate("Is this message spam ?", ("yes", "no"))
FEW_SHOT = PromptTemplate(
    "Is this message spam ?",
    ("yes", "no"),
    examples=(
        ("win a free prize now", "yes"),
        ("see you at lunch", "no"),
        ("claim your reward today", "yes"),
    ),
    system="you label short texts",
)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_forward_matches_unpadded_reference(tokenizer, side: str, attn: str) -> None:
    llm = HFLLM(
        make_causal(tokenizer, attn),
        tokenizer,
        "tiny",
        batch_size=3,
        padding_side=side,
        prefix_cache=False,
    )
    batch = llm.score(TEXTS, PROMPT)
    expected = reference_logits(llm, TEXTS, PROMPT)
    assert len({len(llm.encode(PROMPT, t)) for t in TEXTS}) > 3  # the batches really are padded
    np.testing.assert_allclose(batch.logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(batch.answers, expected.argmax(axis=1))
    assert np.ptp(expected) > 0.1  # the check is not vacuous: logits differ between items and classes


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_seq2seq_forward_reads_first_decoder_step(tokenizer, kind: str) -> None:
    llm = HFLLM(make_seq2seq(kind, len(tokenizer)), tokenizer, kind, batch_size=4, padding_side="left")
    assert llm.is_seq2seq
    batch = llm.score(TEXTS, FEW_SHOT)
    np.testing.assert_allclose(batch.logits, reference_logits(llm, TEXTS, FEW_SHOT), atol=1e-4, rtol=0)
    assert batch.meta["shared_prefix_tokens"] == 0  # a bidirectional encoder has no reusable prefix


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("chat", [False, True])
def test_prefix_cache_equals_plain_path(tokenizer, causal, side: str, chat: bool) -> None:
    prompt = FEW_SHOT.replace(chat=chat)
    cached = HFLLM(causal, tokenizer, "tiny", batch_size=3, padding_side=side, prefix_cache=True)
    plain = HFLLM(causal, tokenizer, "tiny", batch_size=3, padding_side=side, prefix_cache=False)
    with_cache, without = cached.score(TEXTS, prompt), plain.score(TEXTS, prompt)
    assert with_cache.meta["shared_prefix_tokens"] >= 20
    assert cached.prefix_cache  # the self-check agreed
    np.testing.assert_allclose(with_cache.logits, without.logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(with_cache.logits, reference_logits(plain, TEXTS, prompt), atol=1e-4, rtol=0)
    memo = cached._prefix_memo
    assert memo is not None
    again = cached.score(TEXTS[2:5], prompt)  # a later call with the same prefix reuses the cached prefix
    assert cached._prefix_memo is memo
    np.testing.assert_allclose(again.logits, without.logits[2:5], atol=1e-4, rtol=0)


def test_prefix_cache_falls_back_when_model_gives_no_cache(tokenizer, causal, caplog) -> None:
    original = causal.forward

    def forward_without_cache(*args, **kwargs):
        out = original(*args, **kwargs)
        out.cache = None
        return out

    llm = HFLLM(causal, tokenizer, "tiny", batch_size=4, prefix_cache=True)
    causal.forward = forward_without_cache
    try:
        batch = llm.score(TEXTS, FEW_SHOT)
    finally:
        del causal.forward
    assert not llm.prefix_cache and batch.meta["shared_prefix_tokens"] == 0
    assert "not supported" in caplog.text
    np.testing.assert_allclose(batch.logits, reference_logits(llm, TEXTS, FEW_SHOT), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["causal", "t5"])
def test_generate_takes_max_over_positions_until_eos(tokenizer, kind: str) -> None:
    model = make_causal(tokenizer) if kind == "causal" else make_seq2seq("t5", len(tokenizer))
    llm = HFLLM(model, tokenizer, kind, batch_size=4, method="generate", max_new_tokens=4)
    # make the first greedy token of one item the end-of-sequence token, so generations end at different steps
    first, _ = reference_generate(llm, TEXTS[:1], PROMPT, steps=1, eos=-1)
    with torch.no_grad():
        ids = torch.tensor([llm.encode(PROMPT, TEXTS[0])])
        if llm.is_seq2seq:
            start = torch.tensor([[llm.decoder_start_id]])
            eos = int(model(input_ids=ids, decoder_input_ids=start).logits[0, -1].argmax())
        else:
            eos = int(model(input_ids=ids).logits[0, -1].argmax())
    model.generation_config.eos_token_id = eos
    batch = llm.score(TEXTS, PROMPT)
    expected, taken = reference_generate(llm, TEXTS, PROMPT, steps=4, eos=eos)
    np.testing.assert_allclose(batch.logits, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(batch.logits[0], first[0], atol=1e-4, rtol=0)  # stopped after its first step
    assert batch.meta["output_tokens"] == taken and taken[0] == 1
    if kind == "causal":  # here generations end at different steps, so the mask is exercised
        assert max(taken) > 1
    assert len(batch.meta["generated"]) == len(TEXTS)


def test_costs_follow_the_cost_model(tokenizer, causal) -> None:
    seconds = HFLLM(causal, tokenizer, "tiny", batch_size=2).score(TEXTS, PROMPT)
    assert (seconds.costs > 0).all() and seconds.costs.sum() <= seconds.meta["seconds"] + 1e-9
    priced = CostModel(unit="per_token", per_call=0.5, per_input_token=0.01, per_output_token=0.1)
    batch = HFLLM(causal, tokenizer, "tiny", cost_model=priced).score(TEXTS, PROMPT)
    lengths = np.array([len(tokenizer(PROMPT.render_plain(t))["input_ids"]) for t in TEXTS])
    np.testing.assert_allclose(batch.costs, 0.5 + 0.01 * lengths + 0.1)
    even = HFLLM(causal, tokenizer, "tiny", batch_size=len(TEXTS), time_split="even", prefix_cache=False)
    costs = even.score(TEXTS, PROMPT).costs
    np.testing.assert_allclose(costs, costs[0])


def test_long_text_is_cut_but_answer_cue_kept(tokenizer, causal) -> None:
    llm = HFLLM(causal, tokenizer, "tiny", max_prompt_tokens=30)
    long_text = " ".join(["hello how are you doing"] * 40)
    ids = llm.encode(PROMPT, long_text)
    assert len(ids) <= 30
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == ["Answer", ":"]
    batch = llm.score([long_text, "ok"], PROMPT)
    assert batch.logits.shape == (2, 2)
    with pytest.raises(PromptError, match="without its text"):
        HFLLM(causal, tokenizer, "tiny", max_prompt_tokens=5).encode(PROMPT, "ok")


def test_clear_errors(tokenizer, causal) -> None:
    plain_tokenizer = make_tokenizer(chat=False)
    with pytest.raises(PromptError, match="chat template"):
        HFLLM(causal, plain_tokenizer, "tiny").score(TEXTS, PROMPT.replace(chat=True))
    with pytest.raises(ValueError, match="no token"):  # a class word the vocabulary does not know
        HFLLM(causal, tokenizer, "tiny").score(TEXTS, PromptTemplate("Is this spam ?", ("zebra", "no")))
    with pytest.raises(ValueError, match="cannot be told apart"):
        HFLLM(causal, tokenizer, "tiny").score(TEXTS, PromptTemplate("Is this spam ?", ("yes", "Yes")))
    with pytest.raises(TypeError, match="not one string"):
        HFLLM(causal, tokenizer, "tiny").score("one text", PROMPT)
    with pytest.raises(ValueError, match="method"):
        HFLLM(causal, tokenizer, "tiny", method="sample")  # type: ignore[arg-type]
    empty = HFLLM(causal, tokenizer, "tiny").score([], PROMPT)
    assert empty.logits.shape == (0, 2)


def test_config_builds_hf_llm_from_local_folder(tmp_path, tokenizer, causal) -> None:
    causal.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    config = {
        "llms": [
            {
                "name": "tiny-local",
                "kind": "hf",
                "model": str(tmp_path / "tiny"),
                "batch_size": 4,
                "padding_side": "left",
                "prompt": {"system": "you label short texts"},
                "cost": {"unit": "per_call", "per_call": 2.0},
            }
        ]
    }
    (llm,) = build_llms(config)
    assert isinstance(llm, HFLLM) and llm.name == "tiny-local" and llm.revision
    entry = parse_llm_configs(config)[0]
    from ls_backend.tasks import TaskSpec

    prompt = entry.prompt_for(TaskSpec("spam", "Is this message spam ?", ("yes", "no")), [("ok", "no")])
    assert prompt.system == "you label short texts" and prompt.examples == (("ok", "no"),)
    batch = llm.score(TEXTS, prompt)
    np.testing.assert_allclose(batch.costs, 2.0)
    np.testing.assert_allclose(
        batch.logits, reference_logits(HFLLM(causal, tokenizer, "x"), TEXTS, prompt), atol=1e-4
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "kind": "gpt5"}, "unknown kind"),
        ({"kind": "hf"}, "'name'"),
        ({"name": "a", "kind": "hf", "prompt": {"colour": 1}}, "unknown key 'prompt.colour'"),
        ({"name": "a", "kind": "hf", "prompt": {"template": "{question}"}}, "{text}"),
        ({"name": "a", "kind": "hf", "cost": {"unit": "dollars"}}, "unknown unit"),
        ({"name": "a", "kind": "hf", "cost": {"per_cal": 1}}, "unknown field"),
    ],
)
def test_config_errors(entry: dict, message: str) -> None:
    with pytest.raises(LLMConfigError, match=re.escape(message)):
        parse_llm_configs({"llms": [entry]})


def test_config_rejects_unknown_options_and_duplicates() -> None:
    with pytest.raises(LLMConfigError, match="repeated"):
        parse_llm_configs([{"name": "a", "kind": "hf"}, {"name": "a", "kind": "packaged"}])
    (entry,) = parse_llm_configs([{"name": "a", "kind": "hf", "model": "x", "batchsize": 4}])
    with pytest.raises(LLMConfigError, match=r"unknown field\(s\) \['batchsize'\].*batch_size"):
        entry.build()
    (packaged,) = parse_llm_configs([{"name": "b", "kind": "packaged", "model": "gemma3-270m"}])
    # the packaged model's recommended prompt style (a plain prompt: Gemma is a base model)
    assert packaged.prompt == PACKAGED_MODELS["gemma3-270m"].prompt and packaged.prompt["chat"] is False
