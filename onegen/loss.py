"""The OneGen training loss: L = lambda_gen * CE + lambda_ret * (BPR | InfoNCE), DESIGN section 2.

Retrieval scores are per-vector cosines (each query against each document vector), not the
official code's normalisation over the sequence axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from onegen.training.config import RETRIEVAL_KINDS

IGNORE_INDEX = -100  # label value that takes no loss (prompt tokens, the token after [LK], padding)


@dataclass
class LossOutput:
    """The total loss and its two terms (scalars, graph attached)."""

    total: torch.Tensor  # lambda_gen * generation + lambda_ret * retrieval
    generation: torch.Tensor  # mean next-token cross-entropy over labelled tokens
    retrieval: torch.Tensor  # BPR or InfoNCE over the anchors


def generation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy, mean over tokens whose label is not -100.

    Args:
        logits: (B, T, V) scores at every position.
        labels: (B, T) token ids, -100 where no loss is taken; position t is predicted from t - 1.
        weights: optional (B, T) how many tokens each label stands for (a weighted mean); 1 when None.
    Returns 0 (graph attached) when no token is labelled.
    """
    # Shift so that tokens < n predict n
    shift_logits = logits[..., :-1, :].reshape(-1, logits.shape[-1]).float()  # (B*(T-1), V)
    shift_labels = labels[..., 1:].reshape(-1).to(logits.device)  # (B*(T-1),)
    if not bool((shift_labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    if weights is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    shift_weights = weights[..., 1:].reshape(-1).to(shift_logits) * (shift_labels != IGNORE_INDEX)  # (B*(T-1),)
    losses = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    return (losses * shift_weights).sum() / shift_weights.sum()


def bpr_loss(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: -mean over anchors and negatives of log sigmoid(s+ - s-).

    Args:
        q: (A, D) query vectors (hidden states at [LK]).
        pos: (A, D) the positive entity vector of each anchor (hidden state at [SE]).
        neg: (A, K, D) K negative entity vectors per anchor, K >= 1.
    Scores are cosines of each pair of vectors.
    """
    if neg.shape[1] == 0:
        raise ValueError(f"BPR needs at least one negative per anchor, got neg of shape {tuple(neg.shape)}")
    s_pos = F.cosine_similarity(q.float(), pos.float(), dim=-1)  # (A,)
    s_neg = F.cosine_similarity(q.float()[:, None, :], neg.float(), dim=-1)  # (A, K)
    return -F.logsigmoid(s_pos[:, None] - s_neg).mean()


def infonce_loss(
    q: torch.Tensor,
    docs: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.02,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE: cross-entropy of each query over cosine(q, docs) / temperature.

    Args:
        q: (A, D) query vectors.
        docs: (M, D) candidate entity vectors (in-batch positives and negatives).
        target: (A,) index into `docs` of each query's positive.
        temperature: softmax temperature (0.02 in DESIGN).
        exclude: optional (A, M) bool, True where a doc is left out of that query's softmax.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores = F.normalize(q.float(), dim=-1) @ F.normalize(docs.float(), dim=-1).T / temperature  # (A, M)
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(scores, target.to(q.device))


def onegen_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    kind: str = "bpr",
    temperature: float = 0.02,
    lambda_gen: float = 1.0,
    lambda_ret: float = 1.0,
    label_weights: torch.Tensor | None = None,
) -> LossOutput:
    """The OneGen loss over one packed batch.

    Args:
        logits: (B, T, V); labels: (B, T) with -100 on unlabelled tokens; label_weights: optional (B, T),
            as `generation_loss`'s weights.
        q: (A, D) anchors; pos: (A, D) their positives; neg: (A, K, D) their negatives.
        kind: "bpr" (default) or "infonce" (in-batch: every anchor scores all positives and
            negatives of the batch; a row equal to the anchor's own positive, i.e. the same
            entity twice in the batch, is left out of its denominator).
    A batch with no anchor (A = 0) has retrieval loss 0.
    """
    if kind not in RETRIEVAL_KINDS:
        raise ValueError(f"unknown retrieval loss {kind!r}; choose one of {RETRIEVAL_KINDS}")
    generation = generation_loss(logits, labels, label_weights)
    if q.shape[0] == 0:
        retrieval = generation.new_zeros(())
    elif kind == "bpr":
        retrieval = bpr_loss(q, pos, neg)
    else:
        retrieval = _in_batch_infonce(q, pos, neg, temperature)
    return LossOutput(total=lambda_gen * generation + lambda_ret * retrieval, generation=generation, retrieval=retrieval)


def _in_batch_infonce(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over docs = all positives then all negatives of the batch, duplicates of a positive masked."""
    A, D = q.shape
    docs = torch.cat([pos, neg.reshape(-1, D)], dim=0)  # (M, D), M = A + A*K
    target = torch.arange(A, device=q.device)  # (A,)
    duplicate = (docs[None, :, :] == pos[:, None, :]).all(-1)  # (A, M): same vector as the anchor's positive
    duplicate[target, target] = False
    return infonce_loss(q, docs, target, temperature, exclude=duplicate)
