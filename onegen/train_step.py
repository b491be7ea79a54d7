"""The OneGen training loss of one batch: ONE forward over mention rows and packed entity rows together.

The LM head runs only where a label follows (the target tokens and the entity sequences), not on
prompt and padding slots: about half of a OneGen batch, and the (N, T, V) logits are most of the
activation memory. This needs logits == lm_head(last hidden state), true for Llama, Qwen2, Mistral
and most decoders; models that scale or soft-cap their logits are refused with a clear error.
"""
from __future__ import annotations

import torch
from torch import nn

from onegen import shared_prefix
from onegen.collate import OneGenBatch
from onegen.loss import IGNORE_INDEX, LossOutput, onegen_loss
from onegen.model import TokenIds, decoder_of, packed_last_hidden

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # config keys that change logits


def compute_loss(
    model: nn.Module,
    batch: OneGenBatch,
    token_ids: TokenIds,
    *,
    kind: str = "bpr",
    temperature: float = 0.02,
    lambda_gen: float = 1.0,
    lambda_ret: float = 1.0,
) -> LossOutput:
    """CE over all labelled tokens plus the retrieval loss of the batch's anchors, from one forward pass.

    Args:
        model: a causal LM (or PEFT model) with the OneGen tokens; train or eval mode as the caller set.
        batch: from `OneGenCollator`, on the model's device.
        token_ids: the OneGen token ids; the anchor and entity positions must hold [LK] and [SE].
        kind, temperature, lambda_gen, lambda_ret: as `onegen.loss.onegen_loss`.
    Query vectors are the last layer's hidden states after the final norm at each anchor's [LK],
    document vectors the same at each entity row's last [SE] (the loss takes their cosines).
    """
    _check_plain_logits(model)
    ids, labels = batch.input_ids, batch.labels  # (R, T): B mention rows, then packed entity rows
    rows, cols = batch.anchor_positions.unbind(-1)  # (A,), (A,)
    e_rows, e_cols = batch.entity_positions.unbind(-1)  # (E,), (E,)
    if not (ids[rows, cols] == token_ids.link).all() or not (ids[e_rows, e_cols] == token_ids.entity).all():
        raise ValueError(
            f"batch positions do not hold the OneGen tokens (expected [LK] id {token_ids.link} at anchors and "
            f"[SE] id {token_ids.entity} at entity rows); collate with the same tokenizer and token_ids"
        )
    if batch.prefix_ids.numel():  # the shared prefixes forwarded once (onegen.shared_prefix)
        shared_prefix.enable(model)
        prefix, hidden = shared_prefix.shared_prefix_hidden(
            decoder_of(model), batch.prefix_ids, batch.prefix_positions, batch.prefix_spans, ids, batch.position_ids)
    else:
        prefix, hidden = None, packed_last_hidden(model, ids, batch.position_ids)  # (R, T, D), after the final norm
    q = hidden[rows, cols]  # (A, D) anchor [LK] states
    entities = hidden[e_rows, e_cols]  # (E, D) entity [SE] states

    # Positions t whose next token t + 1 is labelled; the LM head runs on those only.
    p_rows, p_cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)  # (M,), (M,)
    states, targets = [hidden[p_rows, p_cols]], [labels[p_rows, p_cols + 1]]  # (M, D), (M,)
    weights = [torch.ones_like(targets[0], dtype=torch.float)]  # (M,)
    if prefix is not None:  # labels predicted by a prefix state, each standing for `count` sequences
        column, token, count = batch.prefix_targets.unbind(-1)  # (N,) each
        states.append(prefix[column])
        targets.append(token)
        weights.append(count.float())
    # Laid out as one sequence for onegen_loss, which shifts (logits at j predict the label at j + 1):
    # labels [-100, y_0 .. y_M-1] against logits of states [s_0 .. s_M-1, s_0]; the extra last slot is
    # the one the shift drops.
    states = torch.cat(states + [states[0][:1] if len(states[0]) else hidden[0, :1]])  # (M + 1, D)
    targets, weights = torch.cat(targets), torch.cat(weights)
    logits = model.get_output_embeddings()(states)  # (M + 1, V)
    seq_labels = torch.cat([targets.new_full((1,), IGNORE_INDEX), targets])  # (M + 1,)
    seq_weights = torch.cat([weights.new_zeros(1), weights])  # (M + 1,)
    return onegen_loss(
        logits[None],  # (1, M + 1, V)
        seq_labels[None],  # (1, M + 1)
        q,
        entities[batch.positives],  # (A, D)
        entities[batch.negatives],  # (A, K, D)
        kind=kind, temperature=temperature, lambda_gen=lambda_gen, lambda_ret=lambda_ret,
        label_weights=seq_weights[None] if prefix is not None else None,
    )


def _check_plain_logits(model: nn.Module) -> None:
    """Refuse models whose logits are not lm_head(hidden state)."""
    for key in _LOGIT_TRANSFORMS:
        value = getattr(model.config, key, None)
        if value not in (None, 0, 1, 1.0):
            raise ValueError(
                f"{model.config.model_type} transforms its logits ({key}={value}); compute_loss applies the "
                "LM head to labelled positions only and supports models whose logits are lm_head(hidden) "
                "(Llama, Qwen2, Mistral families)"
            )
