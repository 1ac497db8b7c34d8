"""Scoring throughput: the adapter's fast path in each precision against transformers' text-generation pipeline,
side by side, and how close each comes to the machine's peak.

CPU mode (default): the real packaged models (``--models``, default all three), each with its packaged prompt
style and few-shot examples over SMS texts, and these ways to get an answer for every item:

- ``fast <precision>``: ``HFLLM.score`` (method "forward"): batched, one forward pass per item, shared prefix
  computed once, with the model in each precision of ``--precisions`` (``float32``, ``bfloat16``, ``int8``;
  ``hf.set_precision``); ``auto`` is whichever of them the model's ``dtype: auto`` resolves to here;
- ``fast, no prefix cache``: the same without the shared-prefix KV cache;
- ``one at a time``: one unbatched ``model(input_ids)`` per item, logits of the last position;
- ``generate + scores``: what a pipeline does for one item, but returning scores: ``model.generate`` per item,
  ``max_new_tokens=1``, greedy, ``output_scores=True, return_dict_in_generate=True`` (the pipeline itself cannot
  hand back scores);
- ``pipeline``: ``pipeline("text-generation")`` on the rendered prompt strings, ``max_new_tokens=1``, greedy,
  ``batch_size=1`` (its default): text out, no scores, i.e. a lower bound on what a pipeline-based scorer costs.

The baselines run in fp32 (``--no-baselines`` leaves them out). Every method reads the same prompts; they are
interleaved for ``--rounds`` rounds and each method's best round counts. Reported: seconds per item, items/s,
prompt tokens/s, the fp32 fast path's speed-up over each, and for every row the executed FLOP/s (int8: OP/s) as
a fraction of the CPU's peak for that precision and of a GEMM measured here in that precision:

- executed FLOPs = per computed token 2 x (the decoder's linear weights) + 4 x layers x heads x head_dim x
  (its context length) for attention, plus 2 x hidden x vocabulary for the one answer position per item; a
  shared prefix that the fast path keeps cached from an earlier call is not computed, and padding is not
  counted;
- CPU peak = cores (torch threads) x frequency x FMA instructions per cycle per core x lanes x 2, where the
  vector width comes from the CPU's flags (512 bits with ``avx512f``, else 256 with ``avx2``), lanes = width / 32
  for fp32, width / 16 for bf16 with ``avx512_bf16`` (VDPBF16PS: two bf16 products per fp32 lane; fp32 lanes
  without it), width / 8 for int8 with ``avx512_vnni`` (VPDPBUSD; width / 16 without it), the frequency is
  ``cpu MHz`` of /proc/cpuinfo (``--ghz`` overrides it; under a hypervisor that is the nominal clock, and a boost
  clock above it makes the fractions too high), and FMA instructions per cycle are 2, except 1 on AMD family 25
  with AVX-512 (Zen 4 runs a 512-bit instruction as two 256-bit halves on its two FMA pipes; ``--fma-per-cycle``
  overrides it);
- GEMM roof = the best FLOP/s of a 2048 x 2048 x 2048 product in that precision (fp32 and bf16 ``torch.matmul``,
  int8 a dynamically quantized ``Linear``), measured at the start of the run with the same threads.

CUDA mode (``--cuda``, for a GPU machine; not run on the CPU-only machines): a Llama-2-7B-shaped model (hidden
4096, 32 layers, 32 heads, intermediate 11008) with random bf16 weights and the SmolLM2 tokenizer's vocabulary
(49,152 instead of 32,000, so the same prompts tokenize), batch sizes 1..256: items/s of the fast path against
the ``generate + scores`` and ``pipeline`` baselines, and the fraction of a measured bf16 matmul peak.

    .venv/bin/python scripts/bench_scoring.py --items 48 --batch-size 16 [--models ...] [--precisions ...]
        [--shots 2 8] [--json FILE]
    .venv/bin/python scripts/bench_scoring.py --cuda --items 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ls_backend.benchmark.flops import cpu_peak, forward_flops
from ls_backend.confidence import class_logits
from ls_backend.datasets import load_sms_spam
from ls_backend.llms import PromptTemplate
from ls_backend.llms.hf import HFLLM, cpu_flags, set_precision
from ls_backend.llms.packaged import PACKAGED_MODELS, load_packaged, packaged_precision

QUESTION = "Is this SMS message spam?"
EXAMPLES = (
    ("WINNER!! You have been selected to receive a 900 prize reward! Call now to claim.", "yes"),
    ("Hey, are we still meeting for lunch today? Let me know.", "no"),
)


def sms_texts(n: int) -> list[str]:
    records = load_sms_spam()[:4000]  # few-shot examples come from the rest
    rng = np.random.default_rng(0)
    return [records[i].text for i in rng.choice(len(records), size=n, replace=False)]


def few_shot_examples(k: int) -> tuple[tuple[str, str], ...]:
    """The two hand-written examples, then labeled SMS texts (spam and ham alternating, at most 200 chars)."""
    rest = load_sms_spam()[4000:]
    spam = [(r.text[:200], "yes") for r in rest if r.label == "spam"]
    ham = [(r.text[:200], "no") for r in rest if r.label == "ham"]
    more = [pair for pairs in zip(spam, ham, strict=False) for pair in pairs]
    return (EXAMPLES + tuple(more))[:k]


def timed(fn: Callable[[], Any], warmup: Callable[[], Any] | None = None) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``, after an untimed ``warmup()``."""
    if warmup is not None:
        warmup()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def one_at_a_time(llm: HFLLM, encoded: list[list[int]], ids: list[list[int]]) -> np.ndarray:
    rows = []
    with torch.inference_mode():
        for seq in encoded:
            # logits_to_keep=1: only the last position's vocabulary logits, as generate computes them
            logits = llm.model(input_ids=torch.tensor([seq], device=llm.device), logits_to_keep=1).logits[
                :, -1
            ]
            rows.append(class_logits(logits, ids)[0])
    return np.array(rows)


def generate_with_scores(llm: HFLLM, encoded: list[list[int]], ids: list[list[int]]) -> np.ndarray:
    rows = []
    with torch.inference_mode():
        for seq in encoded:
            input_ids = torch.tensor([seq], device=llm.device)
            out = llm.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=1,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=llm.pad_id,
            )
            rows.append(class_logits(out.scores[0], ids)[0])
    return np.array(rows)


def run_pipeline(llm: HFLLM, prompts: list[str]) -> list[Any]:
    from transformers import pipeline

    generator = pipeline("text-generation", model=llm.model, tokenizer=llm.tokenizer, device=llm.device)
    return list(
        generator(prompts, max_new_tokens=1, do_sample=False, return_full_text=False, pad_token_id=llm.pad_id)
    )


def rendered_prompts(llm: HFLLM, prompt: PromptTemplate, texts: list[str]) -> list[str]:
    if prompt.chat:
        return [
            llm.tokenizer.apply_chat_template(
                prompt.render_messages(t), add_generation_prompt=True, tokenize=False
            )
            for t in texts
        ]
    return [prompt.render_plain(t) for t in texts]


def prompt_tokens(llm: HFLLM, prompt: PromptTemplate, texts: list[str]) -> list[int]:
    return [len(llm.encode(prompt, t)) for t in texts]


def cpu_ghz() -> float:
    """Mean ``cpu MHz`` of /proc/cpuinfo, in GHz (0 where it is not there)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except OSError:
        return 0.0
    return float(np.mean(mhz)) / 1000 if mhz else 0.0


def default_fma_per_cycle() -> int:
    """2 FMA instructions per cycle per core, 1 on AMD family 25 with AVX-512 (Zen 4: 512-bit ops in halves)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return 2
    amd = "AuthenticAMD" in info
    family = next(
        (line.split(":")[1].strip() for line in info.splitlines() if line.startswith("cpu family")), ""
    )
    return 1 if amd and family == "25" and "avx512f" in cpu_flags() else 2


def gemm_roof(precision: str, n: int = 2048, repeats: int = 3) -> float:
    """Best measured FLOP/s (int8: OP/s) of an n x n x n product in ``precision`` on the CPU."""
    torch.manual_seed(0)
    a = torch.randn(n, n)
    if precision == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = int8_linear(n)
        run: Callable[[], Any] = lambda: layer(a)  # noqa: E731
    else:
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        x, y = a.to(dtype), torch.randn(n, n).to(dtype)
        run = lambda: x @ y  # noqa: E731
    best = 0.0
    with torch.inference_mode():
        run()
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeats):
                run()
            best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best


def int8_linear(n: int) -> Any:
    """A dynamically quantized n x n linear layer (int8 weights per channel)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    layer = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False)).eval()
    return quantize_dynamic(layer, {"0": per_channel_dynamic_qconfig}, inplace=False)


def compare(
    llms: dict[str, HFLLM],
    texts: list[str],
    prompt: PromptTemplate,
    rounds: int = 3,
    baselines: bool = True,
) -> list[dict[str, Any]]:
    """Every method on the same prompts, interleaved for ``rounds`` rounds; each method's best round counts
    (the machine is shared, so the least disturbed round is the fairest measure). ``llms`` maps a precision to
    the model loaded in it (float32 first: the baselines use it). One row per method."""
    fp32 = llms["float32"]
    encoded = [fp32.encode(prompt, t) for t in texts]
    lengths = [len(e) for e in encoded]
    ids = fp32.class_token_ids(prompt.classes)
    strings = rendered_prompts(fp32, prompt, texts)

    usable: dict[int, bool] = {}  # per model: whether its prefix cache passed its one-time check
    shared: dict[tuple[int, bool], int] = {}  # shared-prefix tokens of the last call, per model and setting

    def fast(llm: HFLLM, prefix_cache: bool, items: list[str]) -> np.ndarray:
        llm.prefix_cache = prefix_cache and usable.get(id(llm), True)
        batch = llm.score(items, prompt)
        if prefix_cache:
            usable.setdefault(id(llm), llm.prefix_cache)
        shared[id(llm), prefix_cache] = int(batch.meta["shared_prefix_tokens"])
        return batch.logits

    methods: dict[str, tuple[str, HFLLM, Callable[[int], Any]]] = {}
    for precision, llm in llms.items():
        methods[f"fast {precision}"] = (precision, llm, lambda n, llm=llm: fast(llm, True, texts[:n]))
    if baselines:
        methods["fast float32, no prefix cache"] = ("float32", fp32, lambda n: fast(fp32, False, texts[:n]))
        methods["one forward per item"] = ("float32", fp32, lambda n: one_at_a_time(fp32, encoded[:n], ids))
        methods["generate(1 token)+scores per item"] = (
            "float32",
            fp32,
            lambda n: generate_with_scores(fp32, encoded[:n], ids),
        )
        methods['pipeline("text-generation"), 1 token'] = (
            "float32",
            fp32,
            lambda n: run_pipeline(fp32, strings[:n]),
        )
    for _, _, run in methods.values():  # warm up (and let the prefix cache pass its one-time check)
        run(2)
    best = dict.fromkeys(methods, np.inf)
    outputs: dict[str, Any] = {}
    for _ in range(rounds):
        for method, (_, _, run) in methods.items():
            seconds, outputs[method] = timed(lambda run=run: run(len(texts)))  # type: ignore[misc]
            best[method] = min(best[method], seconds)
    rows = []
    for method, (precision, llm, _) in methods.items():
        # the fast path keeps the shared prefix's KV cache from call to call: the timed calls never compute it
        cached = shared[id(llm), True] if method == f"fast {precision}" else 0
        rows.append(
            {
                "method": method,
                "precision": precision,
                "seconds": best[method],
                "seconds/item": best[method] / len(texts),
                "items/s": len(texts) / best[method],
                "tokens/s": sum(lengths) / best[method],
                "flop/s": forward_flops(llm.model, lengths, cached) / best[method],
                "cached_prefix_tokens": cached,
                "logits": outputs[method] if isinstance(outputs[method], np.ndarray) else None,
            }
        )
    for llm in llms.values():
        llm.prefix_cache = usable.get(id(llm), True)
    return rows


def print_rows(
    title: str, rows: list[dict[str, Any]], peaks: dict[str, float], roofs: dict[str, float]
) -> None:
    fast = rows[0]
    print(f"\n{title}")
    print(f"{'method':40s} {'s/item':>7s} {'items/s':>7s} {'tok/s':>6s} {'x fp32':>6s} {'GFLOP/s':>8s} "
          f"{'% peak':>6s} {'% GEMM':>6s} {'max |dlogit|':>12s}")  # fmt: skip
    for row in rows:
        diff = "" if row["logits"] is None else f"{np.abs(row['logits'] - fast['logits']).max():.2e}"
        ratio = row["seconds"] / fast["seconds"]
        peak, roof = peaks[row["precision"]], roofs[row["precision"]]
        print(f"{row['method']:40s} {row['seconds/item']:7.3f} {row['items/s']:7.2f} {row['tokens/s']:6.0f} "
              f"{ratio:6.2f} {row['flop/s'] / 1e9:8.1f} {row['flop/s'] / peak:6.1%} {row['flop/s'] / roof:6.1%} "
              f"{diff:>12s}")  # fmt: skip


def cpu_mode(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    texts = sms_texts(args.items)
    precisions = ["float32", *[p for p in args.precisions if p != "float32"]]
    ghz = args.ghz or cpu_ghz()
    fma = args.fma_per_cycle or default_fma_per_cycle()
    peaks = {p: cpu_peak(p, args.threads, ghz, fma) for p in precisions}
    roofs = {p: gemm_roof(p) for p in precisions}
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(texts)} SMS items, "
          f"batch size {args.batch_size}, few-shot prompts ({args.shots} examples), best of "
          f"{args.rounds} interleaved rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    print(
        f"CPU peak = {args.threads} cores x {ghz:.3f} GHz x {fma} FMA/cycle x lanes x 2 "
        f"(flags: {' '.join(sorted(cpu_flags() & {'avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16'}))})"
    )
    for p in precisions:
        unit = "GOP/s" if p == "int8" else "GFLOP/s"
        print(f"  {p}: peak {peaks[p] / 1e9:.0f} {unit}, GEMM roof {roofs[p] / 1e9:.0f} {unit} "
              f"({roofs[p] / peaks[p]:.0%} of peak)")  # fmt: skip
    report: dict[str, Any] = {
        "command": "python scripts/bench_scoring.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "ghz": ghz,
        "fma_per_cycle": fma,
        "peaks": peaks,
        "gemm_roofs": roofs,
        "loadavg_before": list(load),
        "models": {},
    }
    for name in args.models:
        base, tokenizer = load_packaged(name, dtype="float32")
        llms = {}
        for precision in precisions:
            model = (
                base
                if precision == "float32"
                else set_precision(load_packaged(name, dtype="float32")[0], precision)
            )
            llms[precision] = HFLLM(model, tokenizer, name, batch_size=args.batch_size)
        auto = packaged_precision(name)
        report["models"][name] = {"auto": auto, "shots": {}}
        for shots in args.shots:
            prompt = PromptTemplate(
                QUESTION, ("yes", "no"), examples=few_shot_examples(shots), **PACKAGED_MODELS[name].prompt
            )
            rows = compare(llms, texts, prompt, rounds=args.rounds, baselines=not args.no_baselines)
            mean_tokens = np.mean(prompt_tokens(llms["float32"], prompt, texts))
            shared = llms["float32"].score(texts, prompt).meta["shared_prefix_tokens"]
            print_rows(
                f"{name}, {shots} examples: mean prompt {mean_tokens:.0f} tokens, shared prefix {shared}; "
                f"auto = {auto}",
                rows,
                peaks,
                roofs,
            )
            by_method = {r["method"]: r for r in rows}
            if f"fast {auto}" in by_method:
                ratio = by_method[f"fast {auto}"]["seconds"] / by_method["fast float32"]["seconds"]
                print(f"auto ({auto}) / fp32 fast path, seconds per item: {ratio:.2f}")
            report["models"][name]["shots"][str(shots)] = {
                "mean_prompt_tokens": float(mean_tokens),
                "shared_prefix_tokens": int(shared),
                "rows": [
                    {
                        **{k: v for k, v in r.items() if k != "logits"},
                        "fraction_of_peak": r["flop/s"] / peaks[r["precision"]],
                        "fraction_of_gemm": r["flop/s"] / roofs[r["precision"]],
                        "max_abs_logit_diff_to_fp32_fast": None
                        if r["logits"] is None
                        else float(np.abs(r["logits"] - rows[0]["logits"]).max()),
                    }
                    for r in rows
                ],
            }
        del llms, base
    report["loadavg_after"] = list(os.getloadavg())
    print(f"load average after {report['loadavg_after'][0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, sort_keys=True)
            f.write("\n")


def matmul_peak(device: str, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matmul FLOP/s on the device (the best of a few timed runs)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best


def cuda_mode(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ls_backend.llms.packaged import gguf_file

    assert torch.cuda.is_available(), "--cuda needs a CUDA device"
    import tempfile

    with tempfile.TemporaryDirectory() as work, gguf_file("smollm2-135m-instruct", work) as gguf:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak("cuda")
    texts = sms_texts(args.items)
    prompt = PromptTemplate(QUESTION, ("yes", "no"), examples=EXAMPLES, chat=True)
    print(f"{torch.cuda.get_device_name()}: {n_params / 1e9:.2f}B params (random bf16), measured bf16 matmul "
          f"peak {peak / 1e12:.0f} TFLOP/s, {len(texts)} items")  # fmt: skip
    llm = HFLLM(model, tokenizer, "llama7b-shaped", batch_size=1)
    encoded = [llm.encode(prompt, t) for t in texts]
    tokens = sum(len(e) for e in encoded)
    base = texts[: args.baseline_items]
    ids = llm.class_token_ids(prompt.classes)
    enc_base = encoded[: args.baseline_items]

    def sync(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out

        return run

    seconds, _ = timed(
        sync(lambda: generate_with_scores(llm, enc_base, ids)),
        lambda: generate_with_scores(llm, enc_base[:2], ids),
    )
    generate_rate = len(base) / seconds
    strings = rendered_prompts(llm, prompt, base)
    seconds, _ = timed(sync(lambda: run_pipeline(llm, strings)), lambda: run_pipeline(llm, strings[:2]))
    pipeline_rate = len(base) / seconds
    print(f"baselines on {len(base)} items: generate(1 token)+scores per item {generate_rate:.1f} items/s, "
          f"pipeline {pipeline_rate:.1f} items/s")  # fmt: skip
    print(
        f"{'batch':>5s} {'items/s':>9s} {'tokens/s':>10s} {'x generate':>10s} {'x pipeline':>10s} {'of peak':>8s}"
    )
    for batch_size in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        llm.batch_size = batch_size
        seconds, _ = timed(
            sync(lambda: llm.score(texts, prompt)), lambda: llm.score(texts[: llm.batch_size], prompt)
        )
        rate = len(texts) / seconds
        # forward FLOPs: 2 per parameter per token (attention over these short prompts adds little)
        fraction = 2 * n_params * tokens / seconds / peak
        print(f"{batch_size:5d} {rate:9.1f} {tokens / seconds:10.0f} {rate / generate_rate:10.1f} "
              f"{rate / pipeline_rate:10.1f} {fraction:8.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=48, help="SMS items to score")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 8], help="few-shot example counts (CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each method's best counts")
    parser.add_argument("--models", nargs="+", default=list(PACKAGED_MODELS), help="packaged models (CPU)")
    parser.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16", "int8"], help="precisions (CPU)"
    )
    parser.add_argument("--no-baselines", action="store_true", help="only the fast path (CPU)")
    parser.add_argument("--ghz", type=float, help="CPU frequency for the peak (default: /proc/cpuinfo)")
    parser.add_argument("--fma-per-cycle", type=int, help="FMA instructions per cycle per core (see above)")
    parser.add_argument("--json", help="also write the results to this JSON file (CPU)")
    parser.add_argument("--cuda", action="store_true", help="the 7B-shaped GPU benchmark")
    parser.add_argument("--baseline-items", type=int, default=64, help="items for the baselines (CUDA mode)")
    args = parser.parse_args()
    cuda_mode(args) if args.cuda else cpu_mode(args)


if __name__ == "__main__":
    main()
