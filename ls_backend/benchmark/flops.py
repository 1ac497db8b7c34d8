"""What the scoring benchmark (``scripts/bench_scoring.py``) divides by: the executed FLOPs of the scorer's forward
pass and the CPU's peak FLOP/s in a precision.

- executed FLOPs = per computed token 2 x (the decoder's linear weights) + 4 x layers x heads x head_dim x
  (its context length) for attention, plus 2 x hidden x vocabulary for the one answer position per item; a
  shared prefix kept cached from an earlier call is not computed, and padding is not counted;
- CPU peak = cores x frequency x FMA instructions per cycle per core x lanes x 2, where the vector width comes
  from the CPU's flags (512 bits with ``avx512f``, else 256 with ``avx2``), lanes = width / 32 for fp32, width / 16
  for bf16 with ``avx512_bf16`` (two bf16 products per fp32 lane; fp32 lanes without it), width / 8 for int8 with
  ``avx512_vnni`` (width / 16 without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ls_backend.llms.hf import cpu_flags


def linear_weights(model: Any) -> int:
    """Multiply-adds per token of the decoder's linear layers (fp32 or dynamically quantized), without the head."""
    head = model.get_output_embeddings()
    total = 0
    for module in model.modules():
        if module is head:
            continue
        in_features, out_features = (
            getattr(module, "in_features", None),
            getattr(module, "out_features", None),
        )
        if isinstance(in_features, int) and isinstance(out_features, int) and hasattr(module, "weight"):
            total += in_features * out_features
    return total


def forward_flops(model: Any, lengths: Sequence[int], cached_prefix: int) -> float:
    """Executed FLOPs of scoring prompts of ``lengths`` tokens whose first ``cached_prefix`` tokens come from a
    kept KV cache (module docstring)."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = 4 * config.num_hidden_layers * heads * head_dim
    per_token = 2 * linear_weights(model)
    head = 2 * config.hidden_size * config.vocab_size
    total = 0.0
    for n in lengths:
        computed = n - cached_prefix
        contexts = (
            n * (n + 1) - cached_prefix * (cached_prefix + 1)
        ) / 2  # sum of t + 1 over computed tokens
        total += per_token * computed + attention * contexts + head
    return total


def cpu_peak(precision: str, cores: int, ghz: float, fma_per_cycle: int) -> float:
    """Peak FLOP/s (int8: OP/s) of ``cores`` cores in ``precision`` from the CPU's flags (module docstring)."""
    flags = cpu_flags()
    width = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
    lanes = {
        "float32": width / 32,
        "bfloat16": width / 16 if flags & {"avx512_bf16", "amx_bf16"} else width / 32,
        "int8": width / 8 if flags & {"avx512_vnni", "avx_vnni"} else width / 16,
    }[precision]
    return cores * ghz * 1e9 * fma_per_cycle * lanes * 2
