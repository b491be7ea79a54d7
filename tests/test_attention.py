"""Packed grouped-query attention (onegen.attention): the same outputs as `sdpa`, without KV copies."""
import pytest
import torch
from tiny import tiny_model
from transformers import DynamicCache

from onegen.attention import PACKED_SDPA, packed_gqa


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_packed_attention_gives_the_logits_of_sdpa_on_a_padded_batch_with_a_cache(arch):
    model = tiny_model(300, arch=arch, layers=2)
    assert model.config._attn_implementation == "sdpa"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped: the packed path runs
    torch.manual_seed(1)
    prompt = torch.randint(3, 300, (3, 9))
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[0, :4] = 0  # left padding of different lengths
    prompt_mask[1, :2] = 0
    step = torch.randint(3, 300, (3, 5))  # a multi-token pass after the prompt, as the copy decoder runs
    mask = torch.cat([prompt_mask, torch.ones_like(step)], dim=1)
    positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(5)

    def run():
        cache = DynamicCache()
        with torch.inference_mode():
            first = model(input_ids=prompt, attention_mask=prompt_mask, cache=cache, use_cache=True).logits
            second = model(input_ids=step, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
        return first[prompt_mask.bool()], second

    expected = run()
    with packed_gqa(model):
        assert model.config._attn_implementation == PACKED_SDPA
        packed = run()
    assert model.config._attn_implementation == "sdpa"
    for a, b in zip(expected, packed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packed_gqa_restores_the_attention_when_the_block_fails():
    model = tiny_model(300)
    with pytest.raises(RuntimeError), packed_gqa(model):
        raise RuntimeError("a failed batch")
    assert model.config._attn_implementation == "sdpa"


def test_packed_gqa_leaves_other_attention_implementations_alone():
    model = tiny_model(300)
    model.config._attn_implementation = "eager"
    with packed_gqa(model):
        assert model.config._attn_implementation == "eager"
