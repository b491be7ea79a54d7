"""OneGen loss terms against hand-computed values on tiny tensors."""
import math

import pytest
import torch

from onegen.loss import bpr_loss, generation_loss, infonce_loss, onegen_loss


def log1p_exp_neg(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


def test_generation_loss_shifts_and_ignores_masked_labels():
    logits = torch.zeros(1, 3, 2)
    logits[0, 0] = torch.tensor([0.0, 5.0])  # predicts position 1
    logits[0, 2] = torch.tensor([100.0, -100.0])  # last position predicts nothing: must be unused
    labels = torch.tensor([[7, 1, 0]])  # label at position 0 is never predicted
    expected = (log1p_exp_neg(5.0) + math.log(2.0)) / 2
    assert generation_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    labels_masked = torch.tensor([[-100, 1, -100]])
    assert generation_loss(logits, labels_masked).item() == pytest.approx(log1p_exp_neg(5.0), rel=1e-6)


def test_generation_loss_without_labels_is_zero_with_graph():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = generation_loss(logits, torch.full((2, 4), -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_bpr_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])  # cos 1
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])  # cos 0 and -1
    expected = (log1p_exp_neg(1.0) + log1p_exp_neg(2.0)) / 2
    assert bpr_loss(q, pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_uses_per_vector_cosine():
    torch.manual_seed(0)
    q, pos, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 4, 8)
    scales = torch.tensor([0.1, 5.0, 30.0])
    scaled = bpr_loss(q * scales[:, None], pos * scales.flip(0)[:, None], neg * torch.rand(3, 4, 1) * 10)
    assert scaled.item() == pytest.approx(bpr_loss(q, pos, neg).item(), rel=1e-5)


def test_bpr_needs_a_negative():
    with pytest.raises(ValueError, match="at least one negative"):
        bpr_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 0, 3))


def test_infonce_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # cos 1 and 0
    loss = infonce_loss(q, docs, torch.tensor([0]), temperature=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)  # -log e^2 / (e^2 + e^0)


def test_onegen_loss_weights_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    q = torch.randn(3, 4, requires_grad=True)
    pos, neg = torch.randn(3, 4, requires_grad=True), torch.randn(3, 2, 4, requires_grad=True)
    out = onegen_loss(logits, labels, q, pos, neg, lambda_gen=0.5, lambda_ret=2.0)
    assert out.generation.item() == pytest.approx(generation_loss(logits, labels).item())
    assert out.retrieval.item() == pytest.approx(bpr_loss(q, pos, neg).item())
    assert out.total.item() == pytest.approx(0.5 * out.generation.item() + 2.0 * out.retrieval.item())
    out.total.backward()
    for tensor in (logits, q, pos, neg):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_in_batch_infonce_scores_every_positive_and_negative():
    torch.manual_seed(1)
    q, pos, neg = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4)
    out = onegen_loss(torch.zeros(1, 2, 3), torch.full((1, 2), -100), q, pos, neg, kind="infonce", temperature=0.1)
    docs = torch.cat([pos, neg.reshape(-1, 4)])
    assert out.retrieval.item() == pytest.approx(infonce_loss(q, docs, torch.arange(2), 0.1).item(), rel=1e-6)


def test_in_batch_infonce_leaves_out_a_repeated_positive():
    torch.manual_seed(2)
    q, neg = torch.randn(2, 4), torch.randn(2, 1, 4)
    shared = torch.randn(4)
    pos = torch.stack([shared, shared])  # both anchors link the same entity
    out = onegen_loss(torch.zeros(1, 2, 3), torch.full((1, 2), -100), q, pos, neg, kind="infonce", temperature=0.1)
    # each anchor: its own positive against the two negatives only (the other copy is not a negative)
    docs = torch.cat([shared[None], neg.reshape(-1, 4)])
    expected = infonce_loss(q, docs, torch.zeros(2, dtype=torch.long), 0.1)
    assert out.retrieval.item() == pytest.approx(expected.item(), rel=1e-5)


def test_no_anchor_means_no_retrieval_loss():
    out = onegen_loss(torch.randn(1, 3, 4), torch.tensor([[1, 2, 3]]), torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(0, 4, 8))
    assert out.retrieval.item() == 0.0 and out.total.item() == pytest.approx(out.generation.item())


def test_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match="bpr"):
        onegen_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), torch.ones(1, 2),
                    torch.ones(1, 1, 2), kind="triplet")
