"""Training forwards that compute a prefix shared by many sequences once (prefix KV reuse in training).

Every mention row of a training batch starts with the same chat template and instruction (84 tokens
for SmolLM2), and every entity sequence with the same "Represent the entity ..." line (18 of its
~44 tokens): on AIDA train about 31% of a batch's tokens. The collator cuts those prefixes off
(`shared_prefix_length`); `shared_prefix_hidden` forwards the two prefixes once, as one packed row,
keeps each layer's keys and values, and forwards the rows with every token also attending to its
prefix's keys and values (the mention prefix for mention rows, the entity prefix for entity rows).
Positions continue after the prefix, so every token gets the state it would get with the prefix in
its row; gradients reach the prefix through its keys and values, summed over the sequences that read
them, as when each row forwarded it.

The keys and values travel through transformers' attention interface: `enable(model)` switches a
model that uses `sdpa` to `shared_prefix_sdpa`, which is `sdpa` unless a forward passes the
`prefix_record`/`prefix_read` keyword. The switch stays on (a model with gradient checkpointing
replays the layers, and so this attention, during backward, after `compute_loss` returned).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

SHARED_PREFIX_SDPA = "onegen_shared_prefix_sdpa"
SDPA_NAMES = ("sdpa", SHARED_PREFIX_SDPA)  # attention implementations that behave as sdpa


def shared_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of `seqs`, leaving every sequence at least one more token."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return max(n, 0)


def shared_prefix_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                       prefix_record=None, prefix_read=None, **kwargs):
    """`sdpa` attention that keeps this layer's keys and values in `prefix_record` (a dict by layer), or
    puts the ones kept in `prefix_read` before this pass's (key/value (B, KV, T, d); the mask then has
    P + T columns)."""
    layer = module.layer_idx
    if prefix_record is not None:
        prefix_record.setdefault(layer, (key, value))  # a gradient-checkpointing replay keeps the first ones
    elif prefix_read is not None:
        prefix_key, prefix_value = prefix_read[layer]  # (1, KV, P, d)
        rows = key.shape[0]
        key = torch.cat([prefix_key.expand(rows, -1, -1, -1), key], dim=2)  # (B, KV, P + T, d)
        value = torch.cat([prefix_value.expand(rows, -1, -1, -1), value], dim=2)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


AttentionInterface.register(SHARED_PREFIX_SDPA, shared_prefix_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(SHARED_PREFIX_SDPA, sdpa_mask)


def enable(model: nn.Module) -> None:
    """Switch `model` (with `sdpa` attention) to `shared_prefix_sdpa`; other attentions are refused."""
    config = model.config
    if config._attn_implementation == SHARED_PREFIX_SDPA:
        return
    if config._attn_implementation != "sdpa":
        raise ValueError(
            f"a batch with a shared prefix needs sdpa attention, the model uses {config._attn_implementation!r}; "
            "collate with OneGenCollator(..., share_prefix=False) or load the model with attn_implementation='sdpa'"
        )
    config._attn_implementation = SHARED_PREFIX_SDPA


def sequence_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(R, 1, T, T) bool: each token sees the tokens before it in its own sequence; a sequence starts
    where the positions do not go up by one (padding continues the row's last sequence)."""
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)  # (R, T)
    sequence = (step != 1).cumsum(-1)  # (R, T): the sequence number of each token within its row
    T = position_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()  # (T, T)
    return ((sequence[:, :, None] == sequence[:, None, :]) & causal)[:, None]  # (R, 1, T, T)


def shared_prefix_hidden(decoder: nn.Module, prefix_ids: torch.Tensor, prefix_positions: torch.Tensor,
                         prefix_spans: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states (after the final norm) of the prefixes and of the rows.

    Args:
        decoder: the model's decoder (`get_decoder()`), switched by `enable`.
        prefix_ids, prefix_positions: (P,) the prefixes back to back, positions restarting at each.
        prefix_spans: (R, 2) the [start, end) columns of the prefix each row's tokens continue.
        input_ids, position_ids: (R, T) the rows, positions continuing their prefix's.
    Returns (P, D) prefix states and (R, T, D) row states.
    """
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    prefix_mask = sequence_mask(prefix_positions[None])  # (1, 1, P, P)
    prefix = decoder(input_ids=prefix_ids[None], attention_mask=prefix_mask, position_ids=prefix_positions[None],
                     use_cache=False, prefix_record=kept).last_hidden_state[0]  # (P, D)
    R, T = input_ids.shape
    columns = torch.arange(prefix_ids.shape[0], device=input_ids.device)  # (P,)
    sees_prefix = (columns >= prefix_spans[:, :1]) & (columns < prefix_spans[:, 1:])  # (R, P)
    mask = torch.cat([sees_prefix[:, None, None, :].expand(R, 1, T, -1), sequence_mask(position_ids)], dim=-1)
    rows = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                   prefix_read=kept).last_hidden_state  # (R, T, D)
    return prefix, rows
