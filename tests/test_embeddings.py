from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ls_backend import embeddings


def test_resolver_prefers_argument_then_env_then_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embeddings.ENV_VAR, raising=False)
    packaged = embeddings.packaged_model_folder()
    assert packaged is not None and (packaged / "model.safetensors").is_file()
    assert embeddings.resolve_embedding_model() == str(packaged)
    monkeypatch.setenv(embeddings.ENV_VAR, "org/some-model")
    assert embeddings.resolve_embedding_model() == "org/some-model"
    assert embeddings.resolve_embedding_model("/models/mine") == "/models/mine"
    assert embeddings.resolve_embedding_model(Path("rel")) == "rel"


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        embeddings.load_embedding_model(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("texts", "error"), [([], ValueError), (["ok", " "], ValueError), ("one text", TypeError)]
)
def test_bad_texts(texts: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        embeddings.embed_texts(texts)  # type: ignore[arg-type]


@pytest.mark.slow
def test_packaged_model_embeds_similar_tasks_close(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.set_num_threads(1)
    monkeypatch.delenv(embeddings.ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [
        "Is this SMS message spam?",
        "Is this text message unsolicited advertising or a scam?",
        "Is this news article about football or another sport?",
    ]
    x = embeddings.embed_texts(texts)
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    similarity = x @ x.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1
    assert similarity[0, 1] > similarity[1, 2] + 0.1
    assert embeddings.load_embedding_model(
        embeddings.resolve_embedding_model()
    ) is embeddings.load_embedding_model(embeddings.resolve_embedding_model())
    raw = embeddings.embed_texts(texts[:1], normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw), x[:1], atol=1e-5)
