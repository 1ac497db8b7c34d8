"""Tiny random-weight Llama models with word-level tokenizers, for tests that need a real Hugging Face model
without downloading one: fast to build, deterministic for a seed, loadable with ``from_pretrained``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_ROLES = frozenset({"pad", "unk", "bos", "eos"})
DEFAULT_SPECIAL_TOKENS: Mapping[str, str] = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[BOS]", "eos": "[EOS]"}

SMS_SPECIAL_TOKENS: Mapping[str, str] = {"unk": "[UNK]", "pad": "[PAD]", "bos": "<s>", "eos": "</s>"}
SMS_WORDS = (
    "yes", "no", "spam", "ham", "is", "this", "sms", "message", "text", "answer", "with", "one", "of", "free",
    "win", "prize", "call", "now", "claim", "cash", "hi", "how", "are", "you", "see", "later", "ok", "thanks",
    "love", "home", "going", "to", "the", "a", "i", "me", "my", "it", "for", "and", "or", ",", ".", ":", "?", "!",
)  # fmt: skip


def corpus_words(corpus: str) -> list[str]:
    """The distinct words and punctuation runs of ``corpus``, sorted: a vocabulary that covers it."""
    return sorted(set(re.findall(r"\w+|[^\w\s]+", corpus)))


def tiny_word_tokenizer(
    words: Iterable[str],
    *,
    special_tokens: Mapping[str, str] = DEFAULT_SPECIAL_TOKENS,
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer: ``special_tokens`` (role -> token: pad, unk, bos, eos) take ids 0..3 in
    their order, then the distinct ``words`` in their order."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if set(special_tokens) != SPECIAL_ROLES:
        raise ValueError(
            f"special_tokens must name exactly the roles {sorted(SPECIAL_ROLES)}: {special_tokens}"
        )
    distinct_words = list(dict.fromkeys(words))
    clashes = set(special_tokens.values()) & set(distinct_words)
    if clashes:
        raise ValueError(f"words clash with special tokens: {sorted(clashes)}")
    vocab = {token: i for i, token in enumerate([*special_tokens.values(), *distinct_words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special_tokens["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, **{f"{role}_token": token for role, token in special_tokens.items()}
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    lm_head_scale: float | None = None,
    attn_implementation: str | None = None,
) -> LlamaForCausalLM:
    """A random-weight LlamaForCausalLM (``torch.manual_seed(seed)``) in eval mode over ``tokenizer``'s vocabulary
    and special-token ids. ``lm_head_scale`` multiplies the output head: random weights give logits near 0, a
    scale of ~20 makes the classes differ clearly."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attn_implementation,  # type: ignore[call-arg]  # a PretrainedConfig kwarg; None: default
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if lm_head_scale is not None:
        with torch.no_grad():
            model.lm_head.weight.mul_(lm_head_scale)
    return model


def save_tiny_llama(
    folder: Path,
    words: Iterable[str],
    *,
    seed: int = 0,
    special_tokens: Mapping[str, str] = DEFAULT_SPECIAL_TOKENS,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    lm_head_scale: float | None = None,
) -> Path:
    """Save a :func:`tiny_llama` and its :func:`tiny_word_tokenizer` over ``words`` into ``folder``
    (``save_pretrained``) and return ``folder``. Limits torch to one thread, as every test building one does."""
    import torch

    torch.set_num_threads(1)
    tokenizer = tiny_word_tokenizer(words, special_tokens=special_tokens)
    model = tiny_llama(
        tokenizer,
        seed=seed,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        lm_head_scale=lm_head_scale,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_sms_llama(folder: Path, seed: int = 0) -> Path:
    """The 1-layer, hidden-16 :func:`save_tiny_llama` over :data:`SMS_WORDS` (unscaled head) shared by the
    scoring, cache, CLI and cost tests."""
    return save_tiny_llama(
        folder,
        SMS_WORDS,
        seed=seed,
        special_tokens=SMS_SPECIAL_TOKENS,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
    )
