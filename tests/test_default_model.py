"""Integration: the trained default (embedded SmolLM2-135M-Instruct + bundled adapter) loads and embeds entities (CPU, fp32)."""
import numpy as np
import pytest
import torch

from kb.entity import Entity
from onegen.default_model import DEFAULT_ADAPTER_DIR, DEFAULT_MODEL_NAME
from onegen.model import OneGen


@pytest.mark.slow
def test_default_model_embeds_entities():
    onegen = OneGen.from_pretrained(device="cpu")
    assert onegen.name_or_path == DEFAULT_MODEL_NAME and onegen.dtype == torch.float32
    assert onegen.adapter == str(DEFAULT_ADAPTER_DIR)  # the bundled OneGen fine-tune over the embedded base
    assert onegen.hidden_size == 576 and onegen.token_ids.entity == 49152
    entities = [Entity("Paris", "Paris", "Capital and largest city of France."), Entity("Nile", "Nile", "")]
    vectors = onegen.embed_entities(entities)
    assert vectors.shape == (2, 576) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(onegen.embed_entities(entities, reuse_prefix=False), vectors, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) < 0.9999  # two entities, two vectors
    assert onegen.fingerprint() == OneGen.from_pretrained(device="cpu").fingerprint()
    base = OneGen.from_pretrained(DEFAULT_MODEL_NAME, device="cpu")  # the untrained base alone
    assert base.adapter is None and base.fingerprint()["weights_sha256"] != onegen.fingerprint()["weights_sha256"]
    assert "quantization_config" not in base.model.config.to_dict()  # plain weights: a full fine-tune can be saved


def test_the_gguf_file_can_be_named_by_an_environment_variable(tmp_path, monkeypatch):
    from onegen.default_model import GGUF_ENV, gguf_path

    monkeypatch.setenv(GGUF_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=GGUF_ENV):
        gguf_path()
    copy = tmp_path / "model.gguf"
    copy.write_bytes(b"GGUF")
    monkeypatch.setenv(GGUF_ENV, str(copy))
    assert gguf_path() == copy
