"""OneGen model: token addition, loading and saving, embeddings, on tiny random models with the real tokenizer."""
import json
import sys
import types

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import tiny_model, tiny_tokenizer

from kb.entity import Entity
from onegen.model import TOKEN_ROWS_FILE, OneGen, TokenIds, add_onegen_tokens, last_hidden, token_rows
from onegen.prompts import entity_input_ids
from onegen.tokens import CONTINUE, ENTITY, LINK, TOKEN_DESCRIPTIONS

ARCHS = ["llama", "qwen2", "mistral"]
ENTITIES = [
    Entity("Paris", "Paris", "Capital and largest city of France."),
    Entity("Berlin", "Berlin", ""),
    Entity("Nile", "Nile", "A major north-flowing river in northeastern Africa, the longest river in the world."),
    Entity("Zürich", "Zürich", "Largest city in Switzerland\nand capital of the canton of Zürich."),
    Entity("AC/DC", "AC/DC", "Australian rock band."),
]


def description_mean(weight: torch.Tensor, tokenizer, token: str) -> torch.Tensor:
    ids = tokenizer(TOKEN_DESCRIPTIONS[token], add_special_tokens=False).input_ids
    return weight[ids].mean(0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tie", [True, False])
def test_new_token_rows_are_mean_of_description_rows(arch, tie):
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    model = tiny_model(vocab, arch=arch, tie=tie)
    embed_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    ids = add_onegen_tokens(model, tokenizer)
    assert (ids.entity, ids.link, ids.cont) == (vocab, vocab + 1, vocab + 2)  # released order: [SE], [LK], [_CONTINUE_]
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.shape[0] == vocab + 3 and head.shape[0] == vocab + 3
    assert (head is embed) == tie or torch.equal(head, embed) == tie
    for token, row in ((LINK, ids.link), (ENTITY, ids.entity), (CONTINUE, ids.cont)):
        torch.testing.assert_close(embed[row], description_mean(embed_before, tokenizer, token))
        source = embed_before if tie else head_before
        torch.testing.assert_close(head[row], description_mean(source, tokenizer, token))
    assert torch.equal(embed[:vocab], embed_before)  # old rows untouched
    assert ids.link in tokenizer("Paris[LK][_CONTINUE_] is").input_ids  # one token, never split


def test_adding_twice_changes_nothing():
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), tie=False)
    first = add_onegen_tokens(model, tokenizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    size = len(tokenizer)
    assert add_onegen_tokens(model, tokenizer) == first
    assert len(tokenizer) == size
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_released_checkpoint_keeps_its_ids_and_rows():
    # A checkpoint whose tokenizer already has the tokens (added in another order, rows trained).
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([LINK, CONTINUE, ENTITY], special_tokens=True)
    model = tiny_model(len(tokenizer), tie=False)
    trained = model.get_input_embeddings().weight.detach().clone()
    ids = add_onegen_tokens(model, tokenizer)
    vocab = tokenizer.get_vocab()
    assert ids == TokenIds(link=vocab[LINK], entity=vocab[ENTITY], cont=vocab[CONTINUE])
    assert ids.link < ids.cont < ids.entity
    assert torch.equal(model.get_input_embeddings().weight, trained)


def test_partial_tokens_and_spare_rows():
    # Qwen2-like: the embedding matrix has spare rows beyond the tokenizer, and [SE] exists already.
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([ENTITY], special_tokens=True)
    model = tiny_model(len(tokenizer) + 10, arch="qwen2")
    se_row = model.get_input_embeddings().weight[len(tokenizer) - 1].detach().clone()
    ids = add_onegen_tokens(model, tokenizer)
    embed = model.get_input_embeddings().weight
    assert embed.shape[0] == len(tokenizer) + 8  # no resize: the spare rows are used
    assert torch.equal(embed[ids.entity], se_row)
    torch.testing.assert_close(embed[ids.link], description_mean(embed, tokenizer, LINK))


@pytest.mark.parametrize("arch", ARCHS)
def test_last_hidden_is_after_final_norm(arch):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), arch=arch)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(lambda m, args, out: captured.update(h=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        hidden = last_hidden(model, ids, mask)
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hook.remove()
    torch.testing.assert_close(hidden, model.model.norm(captured["h"]))
    torch.testing.assert_close(full.hidden_states[-1], hidden)  # transformers' last hidden state is normed too
    assert not torch.allclose(captured["h"], hidden)


def lora(model, **extra):
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **extra)
    return get_peft_model(model, config)


def test_last_hidden_through_peft_uses_the_adapter():
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = last_hidden(model, ids, mask)
        peft_model = lora(model)
        adapted = last_hidden(peft_model, ids, mask)
        full = peft_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(full.hidden_states[-1], adapted)
    assert not torch.allclose(plain, adapted)


@pytest.fixture
def onegen():
    tokenizer = tiny_tokenizer()
    return OneGen(tiny_model(len(tokenizer), layers=2), tokenizer)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_cache_equals_full_forward(arch):
    tokenizer = tiny_tokenizer()
    onegen = OneGen(tiny_model(len(tokenizer), arch=arch), tokenizer)
    cached = onegen.embed_entities(ENTITIES, batch_size=2)
    full = onegen.embed_entities(ENTITIES, batch_size=2, reuse_prefix=False)
    np.testing.assert_allclose(cached, full, atol=1e-5)
    assert cached.dtype == np.float32 and cached.shape == (len(ENTITIES), 32)
    np.testing.assert_allclose(np.linalg.norm(cached, axis=1), 1.0, rtol=1e-5)


def test_prefix_cache_follows_weight_updates(onegen):
    before = onegen.embed_entities(ENTITIES[:2])
    with torch.no_grad():
        onegen.model.model.layers[0].self_attn.k_proj.weight.mul_(2.0)  # a training step, in place
    after = onegen.embed_entities(ENTITIES[:2])
    np.testing.assert_allclose(after, onegen.embed_entities(ENTITIES[:2], reuse_prefix=False), atol=1e-5)
    assert np.abs(after - before).max() > 1e-4


def test_embeddings_do_not_depend_on_batching_or_order(onegen):
    reference = onegen.embed_entities(ENTITIES, batch_size=len(ENTITIES))
    for batch_size in (1, 3):
        np.testing.assert_allclose(onegen.embed_entities(ENTITIES, batch_size=batch_size), reference, atol=1e-5)
    order = [3, 0, 4, 2, 1]
    np.testing.assert_allclose(onegen.embed_entities([ENTITIES[i] for i in order]), reference[order], atol=1e-5)
    assert np.abs(reference[0] - reference[1]).max() > 1e-3  # distinct entities, distinct vectors


@pytest.mark.parametrize("use_prefix", [True, False])
def test_left_and_right_padding_give_the_same_vectors(onegen, use_prefix):
    seqs = [entity_input_ids(onegen.tokenizer, e.title, e.description) for e in ENTITIES]
    prefix = onegen.entity_prefix_ids() if use_prefix else []
    rest = [s[len(prefix):] for s in seqs]
    right = onegen.embed_sequences(rest, prefix=prefix, padding_side="right")
    left = onegen.embed_sequences(rest, prefix=prefix, padding_side="left")
    np.testing.assert_allclose(left, right, atol=1e-5)


def test_entity_prefix_tokenises_like_the_whole_sequence(shared_data):
    tokenizer = tiny_tokenizer()
    onegen = OneGen(tiny_model(len(tokenizer)), tokenizer)
    prefix = onegen.entity_prefix_ids()
    with open(shared_data / "kb" / "entities.jsonl") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(500))]
    for row in rows + [{"title": " leading space", "description": "\nnewline first"}, {"title": "", "description": ""}]:
        assert entity_input_ids(tokenizer, row["title"], row["description"])[: len(prefix)] == prefix, row


def test_sequences_without_entity_token_are_refused(onegen):
    with pytest.raises(ValueError, match=r"\[SE\]"):
        onegen.embed_sequences([[5, 6, 7]])


def save_base(tmp_path, tie=False):
    """A plain base model folder, as a hub model would be (no OneGen tokens)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), tie=tie)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def test_full_model_round_trip(tmp_path):
    base = save_base(tmp_path)
    onegen = OneGen.from_pretrained(str(base))
    assert onegen.dtype == torch.float32 and onegen.device.type in ("cpu", "cuda")
    with torch.no_grad():
        token_rows(onegen.model)[0].weight[onegen.token_ids.entity] += 0.5  # as training would
    before = onegen.embed_entities(ENTITIES)
    onegen.save_pretrained(tmp_path / "full")
    assert not list((tmp_path / "full").glob("*.bin"))
    again = OneGen.from_pretrained(str(tmp_path / "full"))
    assert again.token_ids == onegen.token_ids
    np.testing.assert_allclose(again.embed_entities(ENTITIES), before, atol=1e-6)


@pytest.mark.parametrize("extra", [{}, {"trainable_token_indices": {"embed_tokens": [49152, 49153, 49154]}}],
                         ids=["lora", "lora+trainable-tokens"])
def test_peft_adapter_round_trip(tmp_path, extra):
    base = save_base(tmp_path, tie=False)
    onegen = OneGen.from_pretrained(str(base))
    embed, head = token_rows(onegen.model)
    with torch.no_grad():  # new-token rows moved by training
        embed.weight[onegen.token_ids.entity] += 0.5
        head.weight[onegen.token_ids.link] -= 0.5
    model = lora(onegen.model, **extra)
    if extra:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "trainable_tokens_delta" in name:
                    p.add_(0.3)
    trained = OneGen(model, onegen.tokenizer)
    before = trained.embed_entities(ENTITIES)
    adapter = tmp_path / "adapter"
    trained.save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and (adapter / TOKEN_ROWS_FILE).is_file()
    assert sum(p.stat().st_size for p in adapter.iterdir()) < 1_000_000  # rows, not whole embedding matrices
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    for loaded in (OneGen.from_pretrained(str(adapter)), OneGen.from_pretrained(str(base), adapter=str(adapter))):
        assert loaded.token_ids == trained.token_ids
        np.testing.assert_allclose(loaded.embed_entities(ENTITIES), before, atol=1e-6)
        torch.testing.assert_close(token_rows(loaded.model)[1].weight[trained.token_ids.link], head.weight[trained.token_ids.link])


def test_fingerprint_identifies_weights_and_tokenizer(tmp_path):
    base = save_base(tmp_path)
    first, second = OneGen.from_pretrained(str(base)), OneGen.from_pretrained(str(base))
    assert first.fingerprint() == second.fingerprint()
    assert set(first.fingerprint()) == {"model", "weights_sha256", "tokenizer_sha256"}
    with torch.no_grad():
        next(second.model.parameters()).add_(1e-3)  # weights changed after loading
    assert second.fingerprint()["weights_sha256"] != first.fingerprint()["weights_sha256"]
    assert second.fingerprint()["tokenizer_sha256"] == first.fingerprint()["tokenizer_sha256"]
    other = tiny_tokenizer()
    other.add_tokens(["[XX]"])
    second.tokenizer = other
    assert second.fingerprint()["tokenizer_sha256"] != first.fingerprint()["tokenizer_sha256"]


def test_bfloat16_on_request(tmp_path):
    onegen = OneGen.from_pretrained(str(save_base(tmp_path)), dtype="bfloat16", device="cpu")
    assert onegen.dtype == torch.bfloat16
    vectors = onegen.embed_entities(ENTITIES[:2])
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_missing_folder_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json.*hub id") as err:
        OneGen.from_pretrained(str(tmp_path / "nope"))
    assert "SmolLM2-135M-Instruct" in str(err.value)
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        OneGen.from_pretrained("no-such-org/no-such-model")


def test_folder_without_model_or_safetensors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        OneGen.from_pretrained(str(empty))
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        OneGen.from_pretrained(str(empty))
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        OneGen.from_pretrained(str(empty), adapter=str(tmp_path))


def test_call_delegates_to_inference(onegen, monkeypatch):
    calls = []
    fake = types.ModuleType("onegen.inference")
    fake.annotate = lambda model, texts, **kw: calls.append((model, texts, kw)) or ["done"]
    monkeypatch.setitem(sys.modules, "onegen.inference", fake)
    assert onegen(["a text"], batch_size=3, decoder="greedy") == ["done"]
    assert calls == [(onegen, ["a text"], {"batch_size": 3, "decoder": "greedy"})]


def test_a_hub_id_is_downloaded_unless_offline(tmp_path, monkeypatch):
    """Hub ids are fetched with huggingface_hub (it honours HF_HUB_OFFLINE); the cheap lookups never download."""
    import huggingface_hub

    from onegen.sources import model_folder, resolve

    calls = []

    def fake_snapshot_download(name, local_files_only=False):
        calls.append((name, local_files_only))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert model_folder("some-org/some-model") == tmp_path
    assert resolve("some-org/some-model").base_folder(materialise=False) == tmp_path
    assert calls == [("some-org/some-model", False), ("some-org/some-model", True)]
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):  # the tests run offline, as users may
        monkeypatch.undo()
        model_folder("no-such-org/no-such-model")
