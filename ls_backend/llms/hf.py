"""The Hugging Face local adapter: class logits from a causal or a seq2seq language model.

Two ways to read the class logits (the paper's step 1, :func:`ls_backend.confidence.class_logits`):

- ``method="forward"`` (the fast path, default): one forward pass per item reads the next-token logits at the
  answer position; no generation loop. Causal LMs: the position of the last prompt token (gathered per row, so
  both left and right padding are right; ``position_ids`` are computed from the attention mask, so left padding
  does not shift positions). Seq2seq LMs (the paper's "non-causal" case): the decoder's first step. Items are
  sorted by length and batched (at most ``batch_size``; a new batch where padding would exceed 25%). When all
  prompts of a call share a token prefix (system text, few-shot examples, the question), a causal LM computes
  that prefix ONCE into its KV cache (kept for later calls with the same prefix) and each batch continues from a
  copy of it expanded over the batch; the first use is checked against the plain path, and the adapter falls
  back to plain batches when the model's cache does not support
  this (or disagrees). A seq2seq encoder is bidirectional, so it has no reusable prefix.
- ``method="generate"`` (the paper's original path): greedy generation of up to ``max_new_tokens`` tokens with
  raw logits at every step; each class logit is the max over the generated positions up to and including the
  first end-of-sequence token. Causal LMs are left-padded here, as ``generate`` requires.

The answer is the argmax of the class logits in both methods (it always names a class; the generated text is
kept in ``meta["generated"]`` for inspection). The cost of each item is its share of the measured wall-clock
seconds of its batch (``time_split="tokens"``: in proportion to its prompt tokens; ``"even"``: equal shares),
turned into the configured unit by the LLM's :class:`~ls_backend.llms.base.CostModel`.

Prompts that do not fit the model (``max_prompt_tokens``, default the model's maximum positions) have their text
shortened further (beginning kept, ``" ..."`` appended) until they fit; the answer cue at the end is never cut.

Precision (``dtype`` of the loaders): ``float32``, ``bfloat16``, ``float16``, ``int8`` (dynamic quantization of the
decoder's linear layers: int8 weights per output channel, activations quantized per call; CPU only) or ``auto``
(bf16 where the device computes it natively, see :func:`native_bf16`, fp32 elsewhere, and only among the
precisions ``auto_dtypes`` allows: those whose quality guard was measured to hold for the model; an unmeasured
model stays fp32). In bf16 and fp16 the output head stays fp32 (:class:`Float32Head`): it runs at one position
per item, so it costs little, and a bf16 logit near 30 is rounded to a multiple of 0.125. The precision is part
of the revision (:func:`hf_revision`), so the score cache never mixes precisions; fp32 keeps the revision it has
always had.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import platform
import time
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from ls_backend.confidence import CLASS_MATCHING_RULE, class_logits, class_token_ids
from ls_backend.llms.base import CostModel, ScoredBatch
from ls_backend.llms.prompts import TRUNCATION_MARK, PromptError, PromptTemplate

log = logging.getLogger(__name__)

Method = Literal["forward", "generate"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# what a model can be run in; "int8" is dynamic quantization of the linear layers over fp32
PRECISIONS = ("float32", "bfloat16", "float16", "int8")
DTYPE_CHOICES = ("auto", *PRECISIONS)
# what `auto` may choose for a model whose quality in other precisions was never measured
DEFAULT_AUTO_DTYPES = ("float32",)
# CPU flags (Linux /proc/cpuinfo) of native bf16 dot products: AVX-512 BF16, AMX-BF16, Arm's BF16 extension
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# a shared prefix shorter than this is not worth a separate forward pass and a cache copy
MIN_PREFIX_TOKENS = 8
# a batch's longest (unshared) prompt part may be this many times its shortest (plus a few tokens)
MAX_PADDING = 1.25


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` has native bf16 dot products (so bf16 is faster than fp32, not only smaller).

    ``torch.backends.cpu.get_cpu_capability()`` is not enough: it says "AVX512" on CPUs with AVX-512 but
    without its BF16 extension (Skylake, Cascade Lake), where bf16 is emulated and slower than fp32. So on CPUs
    this asks torch's own check of AVX-512 BF16 / AMX, then the CPU's flags; a fixed answer per machine, so
    that the revision (and the server's prediction of it) never depends on a timing.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, check, None)
        if probe is not None and probe():
            return True
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & (BF16_CPU_FLAGS - {"bf16"}))


def resolve_precision(
    dtype: str, device: str | torch.device = "cpu", auto_dtypes: Sequence[str] = DEFAULT_AUTO_DTYPES
) -> str:
    """The concrete precision of a ``dtype`` setting: itself, or for ``"auto"`` bf16 where the device has native
    bf16 and ``auto_dtypes`` (the precisions measured to keep the model's quality) allows it, else fp32."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPE_CHOICES)}")
    unknown = set(auto_dtypes) - set(PRECISIONS)
    if unknown:
        raise ValueError(
            f"auto_dtypes: unknown precision(s) {sorted(unknown)}; expected some of {PRECISIONS}"
        )
    if dtype != "auto":
        return dtype
    return "bfloat16" if "bfloat16" in auto_dtypes and native_bf16(device) else "float32"


def hf_revision(base: str, precision: str) -> str:
    """The HF adapter's revision: the weights' revision, the class-token rule and (other than fp32) the
    precision, so cached scores never outlive a change of the rule or mix precisions."""
    revision = f"{base}|{CLASS_MATCHING_RULE}" if base else CLASS_MATCHING_RULE
    return revision if precision == "float32" else f"{revision}|{precision}"


class Float32Head(torch.nn.Module):
    """An output head that computes the vocabulary logits in fp32 from a lower-precision model's hidden state."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        weight = cast(torch.Tensor, head.weight)
        self.weight = torch.nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), self.weight, self.bias)


def _dynamic_linear_type() -> type:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    return DynamicLinear


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``) of every linear layer but the
    output head, in place: int8 weights per output channel, activations quantized per call (fbgemm/oneDNN VNNI
    kernels on x86). The head stays fp32: it runs at one position per item and writes the logits themselves."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not installed here); it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        head = model.get_output_embeddings()
        spec = {
            name: per_channel_dynamic_qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
        if not spec:
            raise ValueError("int8: the model has no linear layers to quantize")
        quantize_dynamic(model, spec, inplace=True)
    return model


def model_precision(model: Any) -> str:
    """The precision a loaded model runs in: ``int8`` (dynamically quantized linear layers), else its dtype's
    name; a bf16/fp16 model whose output head is not fp32 is ``<dtype>-logits`` (its logits are rounded)."""
    dynamic = _dynamic_linear_type()
    if any(isinstance(module, dynamic) for module in model.modules()):
        return "int8"
    name = str(model.dtype).removeprefix("torch.")
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if name != "float32" and not isinstance(head, Float32Head):
        return f"{name}-logits"
    return name


def set_precision(model: Any, precision: str) -> Any:
    """An fp32 model converted to ``precision`` in place (see the module docstring); returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    if precision == "float32":
        return model
    if precision == "int8":
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("int8 dynamic quantization runs on the CPU only; use bfloat16 on other devices")
        return quantize_int8(model)
    head = model.get_output_embeddings()
    full_precision_head = Float32Head(head) if head is not None else None
    model.to(DTYPES[precision])
    if full_precision_head is not None:
        model.set_output_embeddings(full_precision_head.to(next(model.parameters()).device))
    return model


def load_model_and_tokenizer(
    model: str,
    gguf_file: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    architecture: Literal["auto", "causal", "seq2seq"] = "auto",
    revision: str | None = None,
    auto_dtypes: Sequence[str] = DEFAULT_AUTO_DTYPES,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id, a local folder, or a GGUF file (``model`` = folder, ``gguf_file`` = name).

    A path to a ``.gguf`` file may also be given directly as ``model``. GGUF weights are dequantized on load.
    ``dtype``: a name of :data:`DTYPE_CHOICES` (``auto`` resolved by :func:`resolve_precision` with
    ``auto_dtypes``) or a ``torch.dtype`` (loaded as is). Named precisions load fp32 weights and convert them
    (:func:`set_precision`), so a bf16 model keeps an fp32 output head.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if gguf_file is None and model.endswith(".gguf") and Path(model).is_file():
        model, gguf_file = str(Path(model).parent), Path(model).name
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if architecture == "auto":
        config = AutoConfig.from_pretrained(model, **kwargs)
        architecture = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    if architecture not in ("causal", "seq2seq"):
        raise ValueError(f"architecture must be 'auto', 'causal' or 'seq2seq', got {architecture!r}")
    tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
    auto: Any = AutoModelForCausalLM if architecture == "causal" else AutoModelForSeq2SeqLM
    if isinstance(dtype, torch.dtype):
        hf_model = auto.from_pretrained(model, dtype=dtype, **kwargs)
        return hf_model.to(device).eval(), tokenizer
    precision = resolve_precision(dtype, device, auto_dtypes)
    if precision == "int8" and torch.device(device).type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only; use bfloat16 on other devices")
    # converted on the CPU before moving, so a GPU never holds the fp32 copy of a model it runs in bf16
    hf_model = set_precision(auto.from_pretrained(model, dtype=torch.float32, **kwargs).eval(), precision)
    return hf_model.to(device), tokenizer


def local_revision(model: str, gguf_file: str | None = None) -> str:
    """A revision id of local weights: sha256 over the names, sizes and mtimes of its files and config.json."""
    folder = Path(model)
    if not folder.exists():
        return ""
    files = [folder / gguf_file] if gguf_file else sorted(p for p in folder.iterdir() if p.is_file())
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        if p.name == "config.json":
            digest.update(p.read_bytes())
    return digest.hexdigest()


def _longest_common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    shortest = min(len(s) for s in sequences)
    if shortest == 0:
        return 0
    matrix = np.array([s[:shortest] for s in sequences], dtype=np.int64)
    differs = (matrix != matrix[0]).any(axis=0)
    return int(np.argmax(differs)) if differs.any() else shortest


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of shape (B, longest), padded on ``side``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
    return ids, mask


def _last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of the last 1 in each row of a 0/1 mask (works for both padding sides)."""
    width = mask.shape[1]
    return width - 1 - torch.argmax(mask.flip(1), dim=1)


class HFLLM:
    """A local Hugging Face language model as an :class:`~ls_backend.llms.base.LLM` (see the module docstring).

    Args:
        model: a loaded ``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM``.
        tokenizer: its tokenizer (a pad token is set to EOS if it has none).
        name: unique id in scores tables and the score cache.
        revision: model revision or weights hash (part of the score cache key).
        cost_model: how costs are counted (default: measured seconds).
        batch_size: items per forward pass.
        method: ``"forward"`` (one pass, fast) or ``"generate"`` (max over up to ``max_new_tokens`` positions).
        max_new_tokens: T of the generate method.
        prefix_cache: compute the prompts' shared prefix once (causal LMs, forward method).
        padding_side: ``"left"`` or ``"right"`` for the forward method of causal LMs (default: the tokenizer's).
        time_split: ``"tokens"`` or ``"even"``: how a batch's seconds are shared among its items.
        max_prompt_tokens: longest prompt in tokens (default: the model's maximum positions, if it has one).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        revision: str = "",
        cost_model: CostModel | None = None,
        batch_size: int = 8,
        method: Method = "forward",
        max_new_tokens: int = 5,
        prefix_cache: bool = True,
        padding_side: Literal["left", "right"] | None = None,
        time_split: Literal["tokens", "even"] = "tokens",
        max_prompt_tokens: int | None = None,
    ) -> None:
        if not name:
            raise ValueError("HFLLM: name must be non-empty")
        if method not in ("forward", "generate"):
            raise ValueError(f"HFLLM: method must be 'forward' or 'generate', got {method!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"HFLLM: batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"HFLLM: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        side = padding_side or getattr(tokenizer, "padding_side", "right")
        if side not in ("left", "right"):
            raise ValueError(f"HFLLM: padding_side must be 'left' or 'right', got {side!r}")
        if time_split not in ("tokens", "even"):
            raise ValueError(f"HFLLM: time_split must be 'tokens' or 'even', got {time_split!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.precision = model_precision(model)
        self.revision = hf_revision(revision, self.precision)
        self.cost_model = cost_model or CostModel()
        self.batch_size = batch_size
        self.method = method
        self.max_new_tokens = max_new_tokens
        self.prefix_cache = prefix_cache
        self.padding_side = side
        self.time_split = time_split
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.decoder_start_id: int | None = None
        if self.is_seq2seq:
            start = getattr(model.config, "decoder_start_token_id", None)
            if start is None:
                start = getattr(model.generation_config, "decoder_start_token_id", None)
            if start is None:
                raise ValueError(f"HFLLM {name!r}: the seq2seq model's config has no decoder_start_token_id")
            self.decoder_start_id = int(start)
        if max_prompt_tokens is None:
            max_positions = getattr(model.config, "max_position_embeddings", None)
            reserve = max_new_tokens if method == "generate" else 1
            max_prompt_tokens = max_positions - reserve if isinstance(max_positions, int) else None
        self.max_prompt_tokens = max_prompt_tokens
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = (
                tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
            )
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._class_ids: dict[tuple[str, ...], list[list[int]]] = {}
        self._prefix_checked = False
        # the last shared prefix and its KV cache (batch size 1): calls with the same prompt reuse it
        self._prefix_memo: tuple[tuple[int, ...], Any] | None = None
        parameters = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in parameters
        # transformers renamed `past_key_values` to `cache` (5.x); use whichever this version takes
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"

    # construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str,
        name: str | None = None,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        architecture: Literal["auto", "causal", "seq2seq"] = "auto",
        revision: str | None = None,
        auto_dtypes: Sequence[str] = DEFAULT_AUTO_DTYPES,
        **options: Any,
    ) -> HFLLM:
        """Load from a hub id, a local folder or a GGUF file; ``options`` go to the constructor. ``dtype`` and
        ``auto_dtypes``: see :func:`load_model_and_tokenizer`."""
        hf_model, tokenizer = load_model_and_tokenizer(
            model,
            gguf_file=gguf_file,
            device=device,
            dtype=dtype,
            architecture=architecture,
            revision=revision,
            auto_dtypes=auto_dtypes,
        )
        rev = revision or getattr(hf_model.config, "_commit_hash", None) or local_revision(model, gguf_file)
        return cls(hf_model, tokenizer, name=name or model, revision=str(rev or ""), **options)

    # public ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def class_token_ids(self, classes: Sequence[str]) -> list[list[int]]:
        key = tuple(classes)
        if key not in self._class_ids:
            self._class_ids[key] = class_token_ids(self.tokenizer, key)
        return self._class_ids[key]

    def encode(self, prompt: PromptTemplate, text: str) -> list[int]:
        """Token ids of the full prompt for one text, shortened to ``max_prompt_tokens`` if needed."""
        ids = self._encode_unbounded(prompt, text)
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids
        text = prompt.truncate(text)
        for _ in range(20):
            keep = max(int(len(text) * limit / len(ids) * 0.95) - len(TRUNCATION_MARK), 0)
            text = text[:keep] + TRUNCATION_MARK
            ids = self._encode_unbounded(prompt, text)
            if len(ids) <= limit:
                return ids
            if keep == 0:
                break
        raise PromptError(
            f"{self.name}: the prompt without its text is {len(ids)} tokens, more than max_prompt_tokens={limit}"
        )

    def score(self, texts: Sequence[str], prompt: PromptTemplate) -> ScoredBatch:
        """Answers, class logits and costs for ``texts`` (see the module docstring)."""
        if isinstance(texts, str):
            raise TypeError("score: texts must be a sequence of strings, not one string")
        if not isinstance(prompt, PromptTemplate):
            raise TypeError(f"score: prompt must be a PromptTemplate, got {type(prompt).__name__}")
        n_classes = len(prompt.classes)
        if len(texts) == 0:
            empty = np.zeros(0)
            return ScoredBatch(np.zeros(0, np.int64), np.zeros((0, n_classes)), empty, {"seconds": 0.0})
        token_ids = self.class_token_ids(prompt.classes)
        encoded = [self.encode(prompt, t) for t in texts]
        lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)

        logits = np.zeros((len(texts), n_classes))
        seconds = np.zeros(len(texts))
        output_tokens = np.ones(len(texts), dtype=np.int64)
        generated: list[str] = [""] * len(texts)
        total_started = time.perf_counter()
        prefix = self._shared_prefix(encoded)
        # the shared prefix is paid once for the whole call: every item carries its share of it
        seconds += self._split(time.perf_counter() - total_started, lengths)
        for rows in self._batches(lengths - (prefix[1] if prefix else 0)):
            batch = [encoded[i] for i in rows]
            started = time.perf_counter()
            with torch.inference_mode():
                if self.method == "forward":
                    token_logits = self._next_token_logits(batch, prefix)
                    logits[rows] = class_logits(token_logits, token_ids)
                else:
                    step_logits, real, texts_out = self._generate(batch)
                    logits[rows] = class_logits(step_logits, token_ids, mask=real)
                    output_tokens[rows] = real.sum(axis=1)
                    for row, out in zip(rows, texts_out, strict=True):
                        generated[row] = out
            seconds[rows] += self._split(time.perf_counter() - started, lengths[rows])
        meta: dict[str, Any] = {
            "seconds": time.perf_counter() - total_started,
            "input_tokens": lengths.tolist(),
            "output_tokens": output_tokens.tolist(),
            "shared_prefix_tokens": prefix[1] if prefix else 0,
            "method": self.method,
        }
        if self.method == "generate":
            meta["generated"] = generated
        costs = self.cost_model.cost(seconds, lengths, output_tokens)
        return ScoredBatch(answers=logits.argmax(axis=1), logits=logits, costs=costs, meta=meta)

    # internals ---------------------------------------------------------------------------------------------
    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Item indices in batches of similar length: sorted by length, at most ``batch_size`` per batch, and a
        new batch whenever padding to the next item would add more than a quarter to the batch's shortest one."""
        order = np.argsort(lengths, kind="stable")
        batches: list[list[int]] = []
        for i in order:
            current = batches[-1] if batches else None
            if (
                current is None
                or len(current) >= self.batch_size
                or lengths[i] > MAX_PADDING * lengths[current[0]] + MIN_PREFIX_TOKENS
            ):
                batches.append([int(i)])
            else:
                current.append(int(i))
        return [np.array(b, dtype=np.int64) for b in batches]

    def _split(self, elapsed: float, lengths: np.ndarray) -> np.ndarray:
        """Shares of ``elapsed`` seconds: in proportion to prompt tokens, or equal (``time_split``)."""
        weights = lengths.astype(np.float64) if self.time_split == "tokens" else np.ones(len(lengths))
        return elapsed * weights / weights.sum()

    def _encode_unbounded(self, prompt: PromptTemplate, text: str) -> list[int]:
        if prompt.chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise PromptError(
                    f"{self.name}: the prompt asks for a chat template (chat: true) but the tokenizer has none; "
                    "use chat: false (plain few-shot prompts) for base models"
                )
            rendered = self.tokenizer.apply_chat_template(
                prompt.render_messages(text), add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(prompt.render_plain(text))["input_ids"])

    def _shared_prefix(self, encoded: list[list[int]]) -> tuple[Any, int] | None:
        """(KV cache of the shared prefix for batch size 1, its length), or None where there is none to share."""
        if not (self.prefix_cache and self.method == "forward" and not self.is_seq2seq and len(encoded) > 1):
            return None
        # at least one token of every prompt must be left to run, so its answer position gets logits
        length = min(_longest_common_prefix(encoded), min(len(e) for e in encoded) - 1)
        if length < MIN_PREFIX_TOKENS:
            return None
        key = tuple(encoded[0][:length])
        if self._prefix_memo is not None and self._prefix_memo[0] == key:
            return self._prefix_memo[1], length
        ids = torch.as_tensor([encoded[0][:length]], dtype=torch.long, device=self.device)
        try:
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                raise TypeError(f"model returned no expandable KV cache ({type(cache).__name__})")
        except (TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError) as e:
            log.warning("%s: shared-prefix KV cache not supported (%s); using plain batches", self.name, e)
            self.prefix_cache = False
            return None
        if not self._prefix_checked and not self._prefix_agrees(encoded[0], (cache, length)):
            self.prefix_cache = False
            return None
        self._prefix_memo = (key, cache)
        return cache, length

    def _prefix_agrees(self, ids: list[int], prefix: tuple[Any, int]) -> bool:
        """Check once that the cached-prefix path gives the plain path's logits for one prompt."""
        self._prefix_checked = True
        with torch.inference_mode():
            cached = self._next_token_logits([ids], prefix).float()
            plain = self._next_token_logits([ids], None).float()
        # int8's activation scales are per call, so its two paths agree no better than bf16's
        tolerance = 1e-3 if self.precision == "float32" else 5e-2
        scale = max(1.0, float(plain.abs().max()))
        if not torch.allclose(cached, plain, atol=tolerance * scale, rtol=0):
            log.warning(
                "%s: logits with the shared-prefix KV cache differ from the plain pass (max %.3g); using plain "
                "batches",
                self.name,
                float((cached - plain).abs().max()),
            )
            return False
        return True

    def _next_token_logits(self, batch: list[list[int]], prefix: tuple[Any, int] | None) -> torch.Tensor:
        """(B, V) next-token logits at each prompt's answer position."""
        device = self.device
        if self.is_seq2seq:
            # absolute encoder positions (BART) need the text at the start, so the encoder is right-padded
            ids, mask = _pad(batch, self.pad_id, "right")
            decoder_ids = torch.full(
                (len(batch), 1), int(self.decoder_start_id or 0), dtype=torch.long, device=device
            )
            out = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), decoder_input_ids=decoder_ids
            )
            return out.logits[:, 0]
        prefix_len = prefix[1] if prefix else 0
        ids, suffix_mask = _pad([seq[prefix_len:] for seq in batch], self.pad_id, self.padding_side)
        mask = torch.cat([torch.ones((len(batch), prefix_len), dtype=torch.long), suffix_mask], dim=1)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, prefix_len:]
        last = _last_real_index(suffix_mask)
        kwargs: dict[str, Any] = {}
        if prefix is not None:
            cache = copy.deepcopy(prefix[0])
            cache.batch_repeat_interleave(len(batch))
            kwargs.update({self._cache_arg: cache, "use_cache": True})
        else:
            kwargs["use_cache"] = False
        keep = torch.unique(last)  # sorted; only these positions need vocabulary logits
        if self._keeps_logits:
            kwargs["logits_to_keep"] = keep.to(device)
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            **kwargs,
        )
        rows = torch.arange(len(batch))
        columns = torch.searchsorted(keep, last) if self._keeps_logits else last
        return out.logits[rows.to(device), columns.to(device)]

    def _generate(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Greedy generation: (B, T, V) raw logits per step, (B, T) mask of the real steps, the generated texts."""
        device = self.device
        ids, mask = _pad(batch, self.pad_id, "right" if self.is_seq2seq else "left")
        config = copy.deepcopy(self.model.generation_config)
        config.update(
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=None,  # a minimum would forbid an end-of-sequence at the first step
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=self.pad_id,
        )
        out = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        steps = torch.stack(out.logits, dim=1).float().cpu().numpy()  # (B, T, V)
        n_steps = steps.shape[1]
        new_tokens = out.sequences[:, -n_steps:].cpu().numpy()
        eos = config.eos_token_id
        eos_ids = np.array([] if eos is None else np.atleast_1d(eos), dtype=np.int64)
        ended = np.isin(new_tokens, eos_ids)
        # a step is real until (and including) the first end-of-sequence token
        ended_before = np.concatenate(
            [np.zeros((len(batch), 1), bool), np.cumsum(ended, axis=1)[:, :-1] > 0], 1
        )
        real = ~ended_before
        texts = [
            str(self.tokenizer.decode(tokens[r], skip_special_tokens=True))
            for tokens, r in zip(new_tokens, real, strict=True)
        ]
        return steps, real, texts

    def describe(self) -> dict[str, Any]:
        """Settings that change scores (for logs and reports)."""
        return {
            "name": self.name,
            "revision": self.revision,
            "method": self.method,
            "max_new_tokens": self.max_new_tokens,
            "seq2seq": self.is_seq2seq,
            "dtype": str(self.model.dtype),
            "precision": self.precision,
            "device": str(self.device),
        }
