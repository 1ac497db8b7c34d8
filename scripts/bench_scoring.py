"""Scoring throughput: the adapter's fast path against transformers' text-generation pipeline, side by side.

CPU mode (default): the real SmolLM2-135M-Instruct from its package (``--qwen`` adds Qwen2.5-Coder-0.5B), the
same few-shot chat prompts over SMS texts, and these ways to get an answer for every item:

- ``fast``: ``HFLLM.score`` (method "forward"): batched, one forward pass per item, shared prefix computed once;
- ``fast, no prefix cache``: the same without the shared-prefix KV cache;
- ``one at a time``: one unbatched ``model(input_ids)`` per item, logits of the last position;
- ``generate + scores``: what a pipeline does for one item, but returning scores: ``model.generate`` per item,
  ``max_new_tokens=1``, greedy, ``output_scores=True, return_dict_in_generate=True`` (the pipeline itself cannot
  hand back scores);
- ``pipeline``: ``pipeline("text-generation")`` on the rendered prompt strings, ``max_new_tokens=1``, greedy,
  ``batch_size=1`` (its default): text out, no scores, i.e. a lower bound on what a pipeline-based scorer costs.

Every method reads the same prompts; items/s and prompt tokens/s are measured in one run and reported with the
fast path's ratio to each.

CUDA mode (``--cuda``, for a GPU machine; not run on the CPU-only machines): a Llama-2-7B-shaped model (hidden
4096, 32 layers, 32 heads, intermediate 11008) with random bf16 weights and the SmolLM2 tokenizer's vocabulary
(49,152 instead of 32,000, so the same prompts tokenize), batch sizes 1..256: items/s of the fast path against
the ``generate + scores`` and ``pipeline`` baselines, and the fraction of a measured bf16 matmul peak.

    .venv/bin/python scripts/bench_scoring.py --items 48 --batch-size 16
    .venv/bin/python scripts/bench_scoring.py --cuda --items 512
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ls_backend.confidence import class_logits
from ls_backend.datasets import load_sms_spam
from ls_backend.llms import PromptTemplate
from ls_backend.llms.hf import HFLLM
from ls_backend.llms.packaged import PACKAGED_MODELS, packaged_llm

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


def compare(
    llm: HFLLM, texts: list[str], prompt: PromptTemplate, rounds: int = 3, baselines: bool = True
) -> list[dict[str, Any]]:
    """Every method on the same prompts, interleaved for ``rounds`` rounds; each method's best round counts
    (the machine is shared, so the least disturbed round is the fairest measure). One row per method."""
    encoded = [llm.encode(prompt, t) for t in texts]
    tokens = sum(len(e) for e in encoded)
    ids = llm.class_token_ids(prompt.classes)
    strings = rendered_prompts(llm, prompt, texts)

    def fast(prefix_cache: bool, items: list[str]) -> np.ndarray:
        llm.prefix_cache = prefix_cache
        return llm.score(items, prompt).logits

    methods: dict[str, Callable[[int], Any]] = {
        "fast (HFLLM.score)": lambda n: fast(True, texts[:n]),
        "fast, no prefix cache": lambda n: fast(False, texts[:n]),
    }
    if baselines:
        methods["one forward per item"] = lambda n: one_at_a_time(llm, encoded[:n], ids)
        methods["generate(1 token)+scores per item"] = lambda n: generate_with_scores(llm, encoded[:n], ids)
        methods['pipeline("text-generation"), 1 token'] = lambda n: run_pipeline(llm, strings[:n])
    for run in methods.values():  # warm up (and let the prefix cache pass its one-time check)
        run(2)
    best = dict.fromkeys(methods, np.inf)
    outputs: dict[str, Any] = {}
    for _ in range(rounds):
        for method, run in methods.items():
            seconds, outputs[method] = timed(lambda run=run: run(len(texts)))  # type: ignore[misc]
            best[method] = min(best[method], seconds)
    llm.prefix_cache = True
    return [
        {
            "method": method,
            "seconds": best[method],
            "items/s": len(texts) / best[method],
            "tokens/s": tokens / best[method],
            "logits": outputs[method] if isinstance(outputs[method], np.ndarray) else None,
        }
        for method in methods
    ]


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    fast = rows[0]
    print(f"\n{title}")
    print(
        f"{'method':42s} {'seconds':>8s} {'items/s':>8s} {'tokens/s':>9s} {'fast is x':>9s} {'max |dlogit|':>12s}"
    )
    for row in rows:
        diff = "" if row["logits"] is None else f"{np.abs(row['logits'] - fast['logits']).max():.2e}"
        ratio = fast["items/s"] / row["items/s"]
        print(f"{row['method']:42s} {row['seconds']:8.2f} {row['items/s']:8.2f} {row['tokens/s']:9.0f} "
              f"{ratio:9.2f} {diff:>12s}")  # fmt: skip


def cpu_mode(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    texts = sms_texts(args.items)
    models = ["smollm2-135m-instruct"] + (["qwen2.5-coder-0.5b-instruct"] if args.qwen else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(texts)} SMS items, "
          f"batch size {args.batch_size}, few-shot chat prompts ({args.shots} examples), best of "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    for name in models:
        llm = packaged_llm(name, batch_size=args.batch_size)
        for shots in args.shots:
            prompt = PromptTemplate(
                QUESTION, ("yes", "no"), examples=few_shot_examples(shots), **PACKAGED_MODELS[name].prompt
            )
            rows = compare(llm, texts, prompt, rounds=args.rounds)
            mean_tokens = np.mean([len(llm.encode(prompt, t)) for t in texts])
            shared = llm.score(texts, prompt).meta["shared_prefix_tokens"]
            print_rows(
                f"{name} (fp32), {shots} examples: mean prompt {mean_tokens:.0f} tokens, shared prefix {shared}",
                rows,
            )


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
    parser.add_argument("--qwen", action="store_true", help="also Qwen2.5-Coder-0.5B-Instruct (CPU mode)")
    parser.add_argument("--cuda", action="store_true", help="the 7B-shaped GPU benchmark")
    parser.add_argument("--baseline-items", type=int, default=64, help="items for the baselines (CUDA mode)")
    args = parser.parse_args()
    cuda_mode(args) if args.cuda else cpu_mode(args)


if __name__ == "__main__":
    main()
