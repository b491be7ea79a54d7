"""compute_loss: one packed forward gives the loss of every sequence forwarded alone, with full logits
(batches without shared prefixes; test_shared_prefix compares those with these)."""
import dataclasses

import pytest
import torch

from onegen.collate import OneGenCollator
from onegen.data import build_examples
from onegen.loss import onegen_loss
from onegen.train_step import compute_loss
from test_data import KB, annotate, tok  # noqa: F401  (tok is a fixture)
from tiny import tiny_model


@pytest.fixture(scope="module")
def setup(tok):  # noqa: F811
    tokenizer, ids = tok
    model = tiny_model(len(tokenizer), seed=1)
    docs = [annotate("Germany beat France .", [("Germany", "Germany")], "a"),
            annotate("Bonn is on the Rhine , far from Paris .", [("Bonn", "Bonn"), ("Paris", "Paris")], "b")]
    examples = build_examples(docs, KB, tokenizer, ids, num_negatives=1)
    batch = OneGenCollator(tokenizer, ids, KB, num_negatives=1, share_prefix=False)(examples)
    return model, ids, batch


def sequences(batch):
    """(row, first column, length) of every sequence of the batch: one per mention row, several per packed row."""
    out = []
    for r in range(batch.input_ids.shape[0]):
        n_real = int(batch.attention_mask[r].sum())  # real tokens fill each row from column 0
        starts = [c for c in range(n_real) if batch.position_ids[r, c] == 0]
        out += [(r, s, e - s) for s, e in zip(starts, starts[1:] + [n_real])]
    return out


def reference_loss(model, batch, kind):
    """onegen_loss from every sequence forwarded alone, unpadded, with the model's full logits."""
    states, logits, labels = {}, [], []
    with torch.no_grad():
        for r, start, n in sequences(batch):
            out = model(batch.input_ids[r:r + 1, start:start + n], output_hidden_states=True)
            for c in range(n):
                states[(r, start + c)] = out.hidden_states[-1][0, c]
            logits.append(out.logits[0])  # (n, V)
            labels.append(torch.cat([batch.labels.new_full((1,), -100), batch.labels[r, start + 1:start + n]]))
    q = torch.stack([states[(r, c)] for r, c in batch.anchor_positions.tolist()])  # (A, D)
    entities = torch.stack([states[(r, c)] for r, c in batch.entity_positions.tolist()])  # (E, D)
    return onegen_loss(torch.cat(logits)[None], torch.cat(labels)[None], q, entities[batch.positives],
                       entities[batch.negatives], kind=kind)


@pytest.mark.parametrize("kind", ["bpr", "infonce"])
def test_packed_loss_equals_separate_forwards(setup, kind):
    model, ids, batch = setup
    assert batch.anchor_positions.shape[0] == 2 and batch.input_ids.shape[0] > 2
    assert len(sequences(batch)) > batch.input_ids.shape[0]  # some row packs several entity sequences
    with torch.no_grad():
        got = compute_loss(model, batch, ids, kind=kind)
    want = reference_loss(model, batch, kind)
    for field in ("total", "generation", "retrieval"):
        assert torch.allclose(getattr(got, field), getattr(want, field), atol=1e-5), field
    assert got.retrieval > 0 and got.generation > 0


def test_loss_has_gradients_for_the_model(setup):
    model, ids, batch = setup
    model.zero_grad()
    compute_loss(model, batch, ids).total.backward()
    assert model.get_input_embeddings().weight.grad[ids.link].abs().sum() > 0  # [LK] row is trained
    model.zero_grad()


def test_positions_without_onegen_tokens_are_refused(setup):
    model, ids, batch = setup
    shifted = dataclasses.replace(batch, anchor_positions=batch.anchor_positions + torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not hold the OneGen tokens"):
        compute_loss(model, shifted, ids)


def test_models_that_transform_logits_are_refused(setup):
    model, ids, batch = setup
    model.config.final_logit_softcapping = 30.0
    try:
        with pytest.raises(ValueError, match="final_logit_softcapping"):
            compute_loss(model, batch, ids)
    finally:
        model.config.final_logit_softcapping = None


def test_training_module_weights_the_retrieval_loss(setup):
    """OneGenLoss, what the training job steps on, scales only the retrieval part by its retrieval weight."""
    from onegen.training.trainable import OneGenLoss

    model, ids, batch = setup
    with torch.no_grad():
        plain = OneGenLoss(model, ids, "infonce")(batch)
        weighted = OneGenLoss(model, ids, "infonce", retrieval_weight=0.25)(batch)
    assert torch.allclose(plain.total, plain.generation + plain.retrieval, atol=1e-6)
    assert torch.allclose(weighted.generation, plain.generation) and torch.allclose(weighted.retrieval, plain.retrieval)
    assert torch.allclose(weighted.total, plain.generation + 0.25 * plain.retrieval, atol=1e-6)
