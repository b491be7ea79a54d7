"""Batches grouped by length (TrainConfig.group_by_length, onegen.training.loop.LengthGroupedSampler)."""
import random
from dataclasses import dataclass

import pytest
import torch

from onegen.training.config import TrainConfig
from onegen.training.loop import LengthGroupedSampler, shuffled_loader


@dataclass
class Example:
    input_ids: list


def two_lengths(n_short=40, n_long=42, seed=0):
    lengths = [10] * n_short + [100] * n_long
    random.Random(seed).shuffle(lengths)
    return [Example([0] * n) for n in lengths]


def batches(loader, seed):
    loader.generator.manual_seed(seed)
    return [[len(e.input_ids) for e in batch] for batch in loader]


def test_grouped_batches_hold_one_length_and_every_example_once():
    examples = two_lengths()
    config = TrainConfig(train="t", kb="k", output="o", batch_size=4, group_by_length=True)
    loader = shuffled_loader(examples, list, config)
    got = batches(loader, 0)
    assert all(len(set(b)) == 1 for b in got)  # one chunk here (82 < 50 batches): no batch mixes lengths
    assert sorted(n for b in got for n in b) == sorted(len(e.input_ids) for e in examples)
    assert [len(b) for b in got] == [4] * 20 + [2]  # the short batch last
    plain = shuffled_loader(examples, list, TrainConfig(train="t", kb="k", output="o", batch_size=4))
    assert sum(len(set(b)) > 1 for b in batches(plain, 0)) > 5  # a plain shuffle mixes them


def test_the_order_follows_the_seed_and_changes_between_epochs():
    sampler = LengthGroupedSampler([len(e.input_ids) for e in two_lengths()], 4, torch.Generator())
    orders = []
    for seed in (0, 0, 1):
        sampler.generator.manual_seed(seed)
        orders.append(list(sampler))
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert sorted(orders[0]) == list(range(82))


def test_chunks_keep_the_shuffle_wide_batches_sorted_inside_each():
    lengths = list(range(1000))
    sampler = LengthGroupedSampler(lengths, 2, torch.Generator().manual_seed(0))
    order = list(sampler)
    pairs = [order[i:i + 2] for i in range(0, len(order), 2)]
    chunk = LengthGroupedSampler.CHUNK_BATCHES * 2
    assert len(pairs) == 500 and sorted(order) == lengths
    assert max(abs(a - b) for a, b in pairs) < 1000 // 4  # neighbours in a sorted chunk of 100 random lengths
    assert pairs[:5] != sorted(pairs[:5])  # the batches themselves come shuffled
    assert chunk < len(lengths)  # several chunks, so the bound above is a chunk's, not the whole set's


def test_grouping_is_refused_with_several_workers():
    with pytest.raises(ValueError, match="group_by_length"):
        TrainConfig(train="t", kb="k", output="o", group_by_length=True, num_workers=2)


def test_the_train_job_flag_sets_it():
    from jobs.train import config_from_args, parse_args

    args = ["--train", "t.tsv", "--kb", "kb.jsonl", "--output", "o"]
    assert config_from_args(parse_args([*args, "--group-by-length"])).group_by_length
    assert not config_from_args(parse_args(args)).group_by_length
