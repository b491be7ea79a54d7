"""The in-place KV cache (onegen.kv_cache): what DynamicLayer holds, without a copy per update."""
import torch
from transformers.cache_utils import DynamicLayer

from onegen.kv_cache import MIN_CAPACITY, GrowingLayer


def _states(batch, slots, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, slots, 4, generator=g), torch.randn(batch, 2, slots, 4, generator=g)


def test_growing_layer_holds_what_dynamic_layer_holds_across_updates_row_drops_and_regrowth():
    growing, dynamic = GrowingLayer(), DynamicLayer()
    for step, slots in enumerate([7, 3, 5, MIN_CAPACITY, 2]):  # the fourth update outgrows the first buffer
        batch = 3 if step < 2 else 2
        if step == 2:  # a row leaves, as copy_decode drops finished rows (it replaces keys and values)
            for layer in (growing, dynamic):
                layer.keys, layer.values = layer.keys[[0, 2]], layer.values[[0, 2]]
        keys, values = _states(batch, slots, step)
        got, want = growing.update(keys, values), dynamic.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert growing.get_seq_length() == dynamic.get_seq_length() == 7 + 3 + 5 + MIN_CAPACITY + 2


def test_updates_within_capacity_write_in_place():
    layer = GrowingLayer()
    layer.update(*_states(2, 10, 0))
    start = layer.keys.data_ptr()
    for seed in range(1, 6):
        layer.update(*_states(2, 4, seed))
    assert layer.keys.data_ptr() == start  # the same buffer: no copy of the cache per pass
    assert layer.keys.shape == (2, 2, 30, 4)
