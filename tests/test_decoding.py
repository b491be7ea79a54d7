"""Copy-speculative decoding gives plain greedy's tokens and the [LK] states of a separate forward.

Tiny random models run in float64 so that batched and one-token-at-a-time forwards round alike and
argmax ties cannot flip. A random model rarely emits [LK]: its output-head row is set to a slightly
scaled copy of the row of the token it emits most, so [LK] replaces that token and the forcing rule runs.
"""
import os
import random

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from onegen.decoding import CPU_DRAFT_TOKENS, DecodeStats, copy_decode, greedy_decode
from onegen.drafting import CopyDrafter
from onegen.kv_cache import PrefixCache
from onegen.model import add_onegen_tokens
from onegen.prompts import mention_prompt

TEXTS = [
    "Germany beat France 2-1 in Paris.",
    "The European Commission said on Thursday it disagreed with German advice to consumers to shun British lamb.",
    "Peter Blackburn reports from Brussels.",
]
MAX_NEW = 40


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _prompts(tokenizer, texts=TEXTS):
    return [tokenizer(mention_prompt(tokenizer, t), add_special_tokens=False).input_ids for t in texts]


def _linking_model(tokenizer, arch, seed):
    """A float64 tiny model (untied head) whose greedy output contains [LK] tokens."""
    model = tiny_model(len(tokenizer), arch=arch, tie=False, seed=seed)
    ids = add_onegen_tokens(model, tokenizer)
    model = model.double()
    plain = greedy_decode(model, ids, _prompts(tokenizer), max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    counts = torch.bincount(torch.tensor([t for d in plain for t in d.tokens]))
    frequent = int(counts.argmax())
    with torch.no_grad():
        head = model.get_output_embeddings().weight  # (V, D)
        head[ids.link] = head[frequent] * 1.05
    return model, ids


class ReferenceDrafter:
    """Drafts the known greedy continuation with, `error_rate` of the time, one wrong token at a random place."""

    def __init__(self, reference, seed=0, error_rate=0.5):
        self.reference = reference
        self.rng = random.Random(seed)
        self.error_rate = error_rate

    def draft(self, row, tokens, k):
        guess = list(self.reference[row][len(tokens) : len(tokens) + k])
        if guess and self.rng.random() < self.error_rate:
            guess[self.rng.randrange(len(guess))] = 7
        return guess


class WrongDrafter:
    """Drafts tokens the model never accepts (fills the cache with masked slots)."""

    def draft(self, row, tokens, k):
        return [3] * k


def _assert_same(fast, plain, atol=1e-8):
    for f, p in zip(fast, plain, strict=True):
        assert f.tokens == p.tokens
        assert f.link_positions == p.link_positions
        torch.testing.assert_close(f.link_states, p.link_states, atol=atol, rtol=1e-6)


@pytest.mark.parametrize("arch,seed", [("llama", 0), ("qwen2", 2), ("mistral", 3)])
def test_copy_decode_equals_greedy_with_any_drafter(tokenizer, arch, seed):
    model, ids = _linking_model(tokenizer, arch, seed)
    prompts = _prompts(tokenizer)
    plain = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    assert sum(d.tokens.count(ids.link) for d in plain) > 0, "the test model should emit [LK]"
    for d in plain:  # the forcing rule holds in the reference
        assert all(d.tokens[i + 1] == ids.cont for i in d.link_positions if i + 1 < len(d.tokens))
    reference = [d.tokens for d in plain]
    for drafter in (None, CopyDrafter(tokenizer, TEXTS), ReferenceDrafter(reference, seed), WrongDrafter()):
        stats = DecodeStats()
        fast = copy_decode(model, ids, prompts, drafter, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[], stats=stats)
        _assert_same(fast, plain)
        if isinstance(drafter, ReferenceDrafter):
            assert stats.accepted > 0 and stats.forward_passes < MAX_NEW


def test_link_states_equal_an_unbatched_forward(tokenizer):
    model, ids = _linking_model(tokenizer, "llama", 0)
    prompts = _prompts(tokenizer)
    fast = copy_decode(model, ids, prompts, CopyDrafter(tokenizer, TEXTS), max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    checked = 0
    for prompt, d in zip(prompts, fast):
        full = torch.tensor([prompt + d.tokens])
        hidden = model(input_ids=full, output_hidden_states=True).hidden_states[-1][0]  # (T, D)
        expected = hidden[[len(prompt) + i for i in d.link_positions]].float()
        torch.testing.assert_close(d.link_states, expected, atol=1e-6, rtol=1e-5)
        checked += len(d.link_positions)
    assert checked > 0


def test_per_row_budgets_eos_and_a_final_link(tokenizer):
    model, ids = _linking_model(tokenizer, "llama", 1)
    prompts = _prompts(tokenizer)
    plain = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    row, link_at = next((r, d.link_positions[0]) for r, d in enumerate(plain) if d.link_positions)
    budgets = [MAX_NEW - 7, MAX_NEW, 5]
    budgets[row] = link_at + 1  # this row stops right on an [LK]: its state still comes back
    fast = copy_decode(model, ids, prompts, ReferenceDrafter([d.tokens for d in plain]), max_new_tokens=budgets,
                       pad_token_id=0, eos_token_ids=[])
    for d, p, budget in zip(fast, plain, budgets):
        assert d.tokens == p.tokens[:budget]
        kept = [i for i, pos in enumerate(p.link_positions) if pos < budget]
        assert d.link_positions == [p.link_positions[i] for i in kept]
        torch.testing.assert_close(d.link_states, p.link_states[kept], atol=1e-8, rtol=1e-6)
    assert fast[row].tokens[-1] == ids.link and fast[row].link_positions[-1] == link_at

    eos = plain[0].tokens[MAX_NEW // 2]  # a token the first row emits half-way: rows stop at it
    stopped = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[eos])
    assert len(stopped[0].tokens) <= MAX_NEW // 2 + 1 and stopped[0].tokens[-1] == eos
    fast = copy_decode(model, ids, prompts, CopyDrafter(tokenizer, TEXTS), max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[eos])
    _assert_same(fast, stopped)


def test_passes_are_wide_while_drafts_are_accepted_and_narrow_when_they_fail(tokenizer):
    model, ids = _linking_model(tokenizer, "llama", 0)
    prompts = _prompts(tokenizer)
    plain = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    right, wrong = DecodeStats(), DecodeStats()
    for drafter, stats in ((ReferenceDrafter([d.tokens for d in plain], error_rate=0), right), (WrongDrafter(), wrong)):
        fast = copy_decode(model, ids, prompts, drafter, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[], stats=stats)
        _assert_same(fast, plain)
    full_width = CPU_DRAFT_TOKENS + 1  # slots per row of a pass at the cap (a CPU here)
    assert right.forward_passes <= MAX_NEW // full_width + 1  # every pass at the cap, every draft accepted
    assert wrong.slots < 0.5 * full_width * wrong.generated  # failing drafts: narrower passes than the cap


def test_a_kept_prompt_prefix_is_reused_across_batches_until_a_weight_changes(tokenizer):
    model, ids = _linking_model(tokenizer, "llama", 0)
    prompts = _prompts(tokenizer)
    batches = [(prompts[:2], TEXTS[:2]), (prompts[2:], TEXTS[2:])]  # the second batch is one prompt
    kept = PrefixCache()
    forwarded = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: forwarded.append(args[0].shape[1]))
    for batch, sources in batches:
        plain = greedy_decode(model, ids, batch, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
        forwarded.clear()
        fast = copy_decode(model, ids, batch, CopyDrafter(tokenizer, sources), max_new_tokens=MAX_NEW, pad_token_id=0,
                           eos_token_ids=[], prefix_cache=kept)
        _assert_same(fast, plain)
    instruction = kept.held(model, prompts[2])
    assert instruction >= 8 and max(forwarded) <= len(prompts[2]) - instruction  # the prefix was not forwarded again

    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # training changed a weight: the kept keys and values are stale
    assert kept.held(model, prompts[2]) == 0
    plain = greedy_decode(model, ids, prompts[2:], max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    fast = copy_decode(model, ids, prompts[2:], CopyDrafter(tokenizer, TEXTS[2:]), max_new_tokens=MAX_NEW, pad_token_id=0,
                       eos_token_ids=[], prefix_cache=kept)
    _assert_same(fast, plain)
    hook.remove()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_prompts_join_as_rows_stop_and_decode_as_alone(tokenizer, batch_size):
    model, ids = _linking_model(tokenizer, "llama", 0)
    texts = TEXTS + ["Rome is the capital of Italy.", "Shares in Tokyo fell on Monday after the Bank of Japan spoke."]
    prompts = _prompts(tokenizer, texts)
    budgets = [MAX_NEW, 9, MAX_NEW - 5, 0, MAX_NEW]  # rows stop at different passes; one has nothing to generate
    plain = [greedy_decode(model, ids, [p], max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])[0] for p in prompts]
    rows_per_forward = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: rows_per_forward.append(args[0].shape[0]))
    for drafter in (CopyDrafter(tokenizer, texts), ReferenceDrafter([d.tokens for d in plain], seed=1), WrongDrafter()):
        stats = DecodeStats()
        fast = copy_decode(model, ids, prompts, drafter, max_new_tokens=budgets, pad_token_id=0, eos_token_ids=[],
                           batch_size=batch_size, stats=stats)
        for d, p, budget in zip(fast, plain, budgets, strict=True):
            assert d.tokens == p.tokens[:budget]
            kept = [i for i, pos in enumerate(p.link_positions) if pos < budget]
            assert d.link_positions == [p.link_positions[i] for i in kept]
            torch.testing.assert_close(d.link_states, p.link_states[kept], atol=1e-8, rtol=1e-6)
        # the instruction was forwarded once, for the first rows: only the prompts' rests were fed
        instruction = len(os.path.commonprefix(prompts))
        assert stats.prompt_fed == sum(len(p) - instruction for p, budget in zip(prompts, budgets) if budget > 0)
    hook.remove()
    assert max(rows_per_forward) == batch_size
    with pytest.raises(ValueError, match="batch_size"):
        copy_decode(model, ids, prompts, None, max_new_tokens=4, pad_token_id=0, batch_size=0)


def test_wasted_slots_are_compacted_without_changing_the_output(tokenizer):
    model, ids = _linking_model(tokenizer, "qwen2", 0)
    prompts = _prompts(tokenizer)
    plain = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    stats = DecodeStats()
    fast = copy_decode(model, ids, prompts, WrongDrafter(), max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[],
                       compact_waste=0.1, stats=stats)
    assert stats.compactions > 0
    _assert_same(fast, plain)


def _halves(model, first, second) -> dict:
    """A device map with the embeddings and the first half of the layers on `first`, the rest on `second`."""
    layers = len(model.model.layers)
    device_map = {f"model.{name}": first for name, _ in model.model.named_children() if name not in ("layers", "norm")}
    device_map |= {f"model.layers.{i}": first if i < layers // 2 else second for i in range(layers)}
    return device_map | {"model.norm": second, "lm_head": second}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_model_split_over_two_gpus_decodes_as_on_one(tokenizer):
    """--gpus-per-replica 2: the cache layers live on two GPUs; dropping finished rows and compacting
    the cache work on each layer's own device, and the output is plain greedy's."""
    from accelerate import dispatch_model

    from onegen.model import _is_split

    model, ids = _linking_model(tokenizer, "llama", 0)
    prompts = _prompts(tokenizer)
    plain = greedy_decode(model, ids, prompts, max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_ids=[])
    split = dispatch_model(model, device_map=_halves(model, 0, 1))
    assert _is_split(split)
    budgets, stats = [MAX_NEW, MAX_NEW, 5], DecodeStats()  # the third row leaves the batch early
    fast = copy_decode(split, ids, prompts, WrongDrafter(), max_new_tokens=budgets, pad_token_id=0,
                       eos_token_ids=[], compact_waste=0.1, stats=stats)
    assert stats.compactions > 0
    for d, p, budget in zip(fast, plain, budgets):
        assert d.tokens == p.tokens[:budget]
        kept = [i for i, pos in enumerate(p.link_positions) if pos < budget]
        torch.testing.assert_close(d.link_states, p.link_states[kept], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_default_model_copy_decode_equals_greedy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onegen.default_model import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    model = AutoModelForCausalLM.from_pretrained(default_model_dir()).eval()
    ids = add_onegen_tokens(model, tok)
    prompts = _prompts(tok, TEXTS)
    pad = tok.pad_token_id
    plain = greedy_decode(model, ids, prompts, max_new_tokens=48, pad_token_id=pad)
    stats = DecodeStats()
    fast = copy_decode(model, ids, prompts, CopyDrafter(tok, TEXTS), max_new_tokens=48, pad_token_id=pad, stats=stats)
    assert [d.tokens for d in fast] == [d.tokens for d in plain]
    assert stats.accepted > 0  # the instruct model copies its input, so drafts are accepted
