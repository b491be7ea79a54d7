"""Shared prefixes in training: forwarded once, the loss and every gradient are those of the plain batch."""
import numpy as np
import pytest
import torch

from onegen.collate import OneGenCollator
from onegen.inference import annotate as annotate_texts
from onegen.data import build_examples
from onegen.model import OneGen
from onegen.shared_prefix import SHARED_PREFIX_SDPA, shared_prefix_length
from onegen.train_step import compute_loss
from onegen.training.config import TrainConfig
from onegen.training.trainable import make_trainable
from test_data import KB, annotate, tok  # noqa: F401  (tok is a fixture)
from tiny import tiny_model

DOCS = [("Germany beat France .", [("Germany", "Germany"), ("France", "France")]),
        ("Bonn is on the Rhine , far from Paris .", [("Bonn", "Bonn"), ("Paris", "Paris")]),
        ("Nothing to link here , only words .", [])]


def batches(tokenizer, ids, num_negatives=2):
    """The same examples collated plainly and with shared prefixes."""
    docs = [annotate(text, spans, f"d{i}") for i, (text, spans) in enumerate(DOCS)]
    examples = build_examples(docs, KB, tokenizer, ids, num_negatives=num_negatives)
    return [OneGenCollator(tokenizer, ids, KB, num_negatives=num_negatives, share_prefix=share)(examples)
            for share in (False, True)]


def trainable(tokenizer, tmp_path, checkpointing):
    """A tiny model under LoRA (no dropout) and trainable OneGen token rows, as the training job makes it."""
    OneGen(tiny_model(len(tokenizer), seed=3), tokenizer, device="cpu").save_pretrained(tmp_path / "base")
    onegen = OneGen.from_pretrained(str(tmp_path / "base"), device="cpu")
    config = TrainConfig(train="", kb="", output="", lora=4, lora_dropout=0.0, gradient_checkpointing=checkpointing)
    model = make_trainable(onegen.model, onegen.token_ids, config)
    for name, p in model.named_parameters():  # LoRA's B starts at 0: make every LoRA path count
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.train(), onegen.token_ids


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("kind", ["bpr", "infonce"])
def test_shared_prefix_gives_the_plain_loss_and_gradients(tok, tmp_path, kind, checkpointing):  # noqa: F811
    tokenizer, _ = tok
    model, ids = trainable(tokenizer, tmp_path, checkpointing)
    plain, shared = batches(tokenizer, ids)
    assert shared.prefix_ids.numel() > 60 and shared.tokens == plain.tokens
    assert shared.attention_mask.sum() + shared.prefix_ids.numel() < plain.attention_mask.sum()  # less to forward
    results = []
    for batch in (plain, shared):
        model.zero_grad()
        out = compute_loss(model, batch, ids, kind=kind)
        out.total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out, grads))
    (want, want_grads), (got, got_grads) = results
    for field in ("total", "generation", "retrieval"):
        assert torch.allclose(getattr(got, field), getattr(want, field), atol=1e-5), field
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 4
    for name, grad in want_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(got_grads[name], grad, atol=1e-5, rtol=1e-4), name
    assert model.config._attn_implementation == SHARED_PREFIX_SDPA


@pytest.mark.gpu
def test_shared_prefix_under_bf16_autocast_on_cuda(tok, tmp_path):  # noqa: F811
    """As the training loop runs on a GPU: bf16 autocast, the loss and gradients close to the plain batch's."""
    tokenizer, _ = tok
    model, ids = trainable(tokenizer, tmp_path, checkpointing=True)
    model.cuda()
    results = []
    for batch in batches(tokenizer, ids):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = compute_loss(model, batch.to("cuda"), ids)
        out.total.backward()
        results.append((out.total.float(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])))
    (want, want_grad), (got, got_grad) = results
    assert torch.allclose(got, want, atol=2e-2) and torch.isfinite(got_grad).all()
    assert torch.nn.functional.cosine_similarity(got_grad, want_grad, dim=0) > 0.99


def test_the_switched_model_decodes_as_before(tok, tmp_path):  # noqa: F811
    """After a shared-prefix step the model keeps `shared_prefix_sdpa`; ordinary forwards and decoding
    give what `sdpa` gives."""
    tokenizer, ids = tok
    onegen = OneGen(tiny_model(len(tokenizer), seed=5), tokenizer, device="cpu")
    texts = ["Germany beat France in Paris .", "Bonn is on the Rhine ."]
    before = annotate_texts(onegen, texts, max_new_tokens=40)
    _, shared = batches(tokenizer, onegen.token_ids)
    with torch.no_grad():
        compute_loss(onegen.model, shared, onegen.token_ids)
    assert onegen.model.config._attn_implementation == SHARED_PREFIX_SDPA
    after = annotate_texts(onegen, texts, max_new_tokens=40)
    assert [doc.marked for doc in after] == [doc.marked for doc in before]
    assert sum(len(doc.mentions) for doc in before) > 0
    for doc_after, doc_before in zip(after, before):
        for a, b in zip(doc_after.mentions, doc_before.mentions):
            assert np.allclose(a.vector, b.vector, atol=1e-6)


def test_a_model_without_sdpa_is_a_clear_error(tok):  # noqa: F811
    tokenizer, ids = tok
    model = tiny_model(len(tokenizer))
    model.config._attn_implementation = "eager"
    _, shared = batches(tokenizer, ids)
    with pytest.raises(ValueError, match="share_prefix=False"):
        compute_loss(model, shared, ids)


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # every sequence keeps a token
    assert shared_prefix_length([[7, 8]]) == 1
    assert shared_prefix_length([[1], [2]]) == 0 and shared_prefix_length([]) == 0
