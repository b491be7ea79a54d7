"""Grouped-query attention for multi-token decoding passes without copying the KV cache per query head.

Hugging Face's `sdpa` attention, given a mask and more than one query token (a prefill, or a copy
decoder's verify pass), expands the keys and values of each KV head to every query head that shares it
(`repeat_kv`): for SmolLM2 (9 query heads over 3 KV heads) three copies of the whole cache per layer
and pass, which costs more than the attention itself once the cache holds a few hundred slots. Here
the query heads of a group are stacked along the query axis instead (the mask repeated to match), so
SDPA runs on the KV heads as they are. Every query row sees the same keys, values and mask as before;
only the copies go.

`packed_gqa(model)` switches a model that uses `sdpa` to this attention for the duration of a block.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from onegen.shared_prefix import SDPA_NAMES

PACKED_SDPA = "onegen_packed_sdpa"


def packed_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`sdpa` attention with each KV head's query heads stacked along the query axis (module doc).

    query (B, H, Q, d), key/value (B, KV, T, d), attention_mask (B or 1, 1, Q, T) bool or additive.
    Returns (B, Q, H, d) as `sdpa_attention_forward` does; cases it does not pack (no grouping, one query,
    no mask, a position bias) go to `sdpa_attention_forward` unchanged."""
    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, dim = query.shape
    if groups == 1 or q_len == 1 or attention_mask is None or attention_mask.shape[1] != 1 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    packed = query.reshape(b, heads // groups, groups * q_len, dim)  # heads are grouped by KV head, in order
    mask = attention_mask.repeat(1, 1, groups, 1)  # (B, 1, groups * Q, T): the same rows for every query head
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )  # (B, KV, groups * Q, d)
    return out.reshape(b, heads, q_len, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)


@contextmanager
def packed_gqa(model):
    """Run `model` with `packed_sdpa_attention_forward` inside the block when it uses `sdpa` (or the training
    switch `onegen.shared_prefix` made; else as is)."""
    config = model.config
    before = config._attn_implementation
    if before not in SDPA_NAMES:
        yield
        return
    config._attn_implementation = PACKED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = before
