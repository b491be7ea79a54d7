"""Positions forwarded in one epoch, batches in a plain shuffle against batches grouped by length.

    python bench/batch_slots.py [--config configs/default.toml] [--stage 7] [--batch-size 8]

Builds the training examples of one recipe stage as `jobs/train.py` would (its silver documents and case
variants included), collates every batch of one epoch with the stage's collator twice, in the seeded plain
shuffle and with `group_by_length` (onegen.training.loop.LengthGroupedSampler), and prints the positions
the model forwards (rows x columns of the batch, plus each shared prefix once) against the real tokens. A
count, not a timing: on a CPU the step time follows it; a GPU step of the small default model is mostly fixed
cost (docs/results.md, 2026-12-04).
"""
from __future__ import annotations

import argparse
import time

from eval.corpora import load_dataset_file
from jobs.train import evaluation_texts
from onegen.collate import OneGenCollator
from onegen.model import OneGen
from onegen.training.config import TrainConfig
from onegen.training.data import prepare_data
from onegen.training.loop import shuffled_loader
from onegen.training.recipe import load_recipe


def epoch_positions(loader) -> tuple[int, int, int]:
    """(positions forwarded, real tokens, batches) of one pass over `loader`."""
    positions = tokens = batches = 0
    for batch in loader:
        rows, cols = batch.input_ids.shape
        positions += rows * cols + batch.prefix_ids.numel()
        tokens += batch.tokens
        batches += 1
    return positions, tokens, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml", help="recipe (default: %(default)s)")
    parser.add_argument("--stage", type=int, default=None, help="its stage whose data is counted (default: the last)")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per batch (default: the stage's)")
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    stage = args.stage or len(recipe.stages)
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    ((_, values),) = recipe.stage_values(overrides, "unused", [stage])
    config = TrainConfig.from_dict(values)
    onegen = OneGen.from_pretrained(config.base, device="cpu")
    held_out = evaluation_texts(config.silver_exclude) if config.silver_docs else ()
    data = prepare_data(config, load_dataset_file(config.train, config.split), onegen.tokenizer, onegen.token_ids,
                        held_out=held_out)
    collator = OneGenCollator(onegen.tokenizer, onegen.token_ids, data.entities, num_negatives=config.num_negatives,
                              seed=config.seed, share_prefix=config.share_prefix)
    print(f"{args.config} stage {stage}: {len(data.examples)} examples, batches of {config.batch_size}")
    print("order                positions     tokens  batches  positions/token  collate s")
    counted = {}
    for grouped in (False, True):
        loader = shuffled_loader(data.examples, collator, TrainConfig.from_dict({**values, "group_by_length": grouped}))
        loader.generator.manual_seed(config.seed * 1000)  # the first epoch's order, as fit seeds it
        started = time.perf_counter()
        positions, tokens, batches = epoch_positions(loader)
        counted[grouped] = positions
        print(f"{'grouped by length' if grouped else 'plain shuffle':18s} {positions:11d} {tokens:10d} {batches:8d}"
              f" {positions / tokens:16.2f} {time.perf_counter() - started:10.1f}")
    print(f"plain / grouped positions = {counted[False] / counted[True]:.2f}x")


if __name__ == "__main__":
    main()
