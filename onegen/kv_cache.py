"""KV caches for decoding: one whose keys and values grow in place, and a prompt prefix's kept across calls.

transformers' `DynamicLayer` appends each pass's keys and values with `torch.cat`, which copies the
whole cache, every layer and every pass: with a few hundred slots per row that copy costs about as
much as the attention. `GrowingLayer` keeps them in buffers with spare room along the sequence axis
(doubled when full), so a pass writes only its own slots; `keys` and `values` are views of the filled
part. Code that replaces `keys`/`values` (dropping rows, compacting) is seen at the next update, which
moves them into a new buffer.

`PrefixCache` holds the keys and values of a prompt prefix (the chat template and the instruction every
mention prompt starts with) across `copy_decode` calls, for as long as the model's weights do not change.
"""
from __future__ import annotations

import torch
from collections.abc import Sequence

from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

MIN_CAPACITY = 256  # slots per row of a new buffer, at least


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that writes new slots into preallocated buffers (module doc)."""

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled = self.keys.shape[-2] if self.keys.numel() else 0
        end = filled + key_states.shape[-2]
        if not self._holds_keys(key_states, end):
            shape = (*key_states.shape[:2], max(2 * end, MIN_CAPACITY), key_states.shape[-1])
            self._key_buffer, self._value_buffer = key_states.new_empty(shape), value_states.new_empty(shape)
            if filled:
                self._key_buffer[:, :, :filled] = self.keys
                self._value_buffer[:, :, :filled] = self.values
        self._key_buffer[:, :, filled:end] = key_states
        self._value_buffer[:, :, filled:end] = value_states
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _holds_keys(self, key_states: torch.Tensor, end: int) -> bool:
        """Whether the buffers still back `self.keys` and have room for `end` slots of these rows."""
        buffer = self._key_buffer
        return (
            buffer is not None
            and buffer.data_ptr() == self.keys.data_ptr()
            and buffer.shape[:2] == key_states.shape[:2]
            and buffer.shape[-2] >= end
        )


def growing_cache() -> Cache:
    """An empty cache of `GrowingLayer`s (one per decoder layer, made on first use)."""
    return Cache(layer_class_to_replicate=GrowingLayer)


def param_versions(model: nn.Module) -> tuple:
    """(name, in-place version counter) of every parameter: changes when training updates a weight."""
    return tuple((name, p._version) for name, p in model.named_parameters())


class PrefixCache:
    """The keys and values of a prompt prefix (chat template and instruction), kept across `copy_decode`
    calls on one model: a batch whose prompts share a prefix takes the longest leading part of it held
    here instead of forwarding it again. A changed weight (training) makes it stale."""

    def __init__(self):
        self.tokens: list[int] = []
        self.versions: tuple = ()  # the model's parameter versions when it was filled
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values (1, H, P, d)

    def held(self, model, prefix: Sequence[int]) -> int:
        """How many first tokens of `prefix` this cache holds for `model` as its weights are now."""
        if not self.tokens or self.versions != param_versions(model):
            return 0
        n, limit = 0, min(len(prefix), len(self.tokens))
        while n < limit and prefix[n] == self.tokens[n]:
            n += 1
        return n
