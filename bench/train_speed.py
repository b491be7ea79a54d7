"""Training-step benchmark: tokens/s of one optimizer micro-batch with and without shared prefixes.

    python bench/train_speed.py [--batches 3] [--batch-size 2] [--threads N] [--config configs/default.toml]

Takes the recipe's data and model settings (AIDA train, the evaluation KB, LoRA, gradient checkpointing
on a CPU), collates the first seeded-shuffled batches twice, plainly and with shared prefixes
(`OneGenCollator(share_prefix=...)`), and times forward + backward of each, alternating the two so
that a noisy machine slows both alike. Tokens are the batch's sequences' tokens either way (a shared
prefix counted for each sequence that has it), so tokens/s compare the same work. The last lines
project one epoch of the recipe's batch size from the measured tokens/s (compare ratios, not machines).
"""
from __future__ import annotations

import argparse
import random
import time
import tomllib

import torch

from eval.corpora import load_dataset_file
from onegen.collate import OneGenCollator
from onegen.model import OneGen
from onegen.train_step import compute_loss
from onegen.training.config import TrainConfig
from onegen.training.data import prepare_data
from onegen.training.trainable import make_trainable


def recipe_config(path: str, batch_size: int) -> TrainConfig:
    """The recipe's [train] settings with this benchmark's batch size (no output is written)."""
    with open(path, "rb") as f:
        values = tomllib.load(f)["train"]
    values.update(batch_size=batch_size, output="unused", gradient_checkpointing=not torch.cuda.is_available())
    return TrainConfig.from_dict(values)


def timed_step(model, batch, token_ids, device) -> tuple[float, float]:
    """Seconds of forward + backward of `batch`, and its loss."""
    batch = batch.to(device)
    started = time.perf_counter()
    loss = compute_loss(model, batch, token_ids).total
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return seconds, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml", help="recipe whose [train] gives data and model")
    parser.add_argument("--batches", type=int, default=3, help="batches timed each way")
    parser.add_argument("--batch-size", type=int, default=2, help="examples per batch (the recipe trains with 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = recipe_config(args.config, args.batch_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    onegen = OneGen.from_pretrained(config.base, device=device, dtype=torch.float32)
    data = prepare_data(config, load_dataset_file(config.train, config.split), onegen.tokenizer, onegen.token_ids)
    model = make_trainable(onegen.model, onegen.token_ids, config).train()
    order = list(range(len(data.examples)))
    random.Random(config.seed).shuffle(order)
    collators = {share: OneGenCollator(onegen.tokenizer, onegen.token_ids, data.entities, seed=config.seed,
                                       num_negatives=config.num_negatives, share_prefix=share) for share in (False, True)}
    totals = {share: [0.0, 0] for share in collators}  # seconds, tokens
    print(f"{len(data.examples)} examples; {args.batches} batches of {args.batch_size}; {torch.get_num_threads()} "
          f"threads; gradient checkpointing {config.gradient_checkpointing}; device {device.type}")
    print("batch  way     rows x cols  forwarded  tokens  seconds  tokens/s  loss")
    for b in range(args.batches):
        examples = [data.examples[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
        for share in (False, True) if b % 2 == 0 else (True, False):
            batch = collators[share](examples)
            seconds, loss = timed_step(model, batch, onegen.token_ids, device)
            forwarded = int(batch.attention_mask.sum()) + batch.prefix_ids.numel()
            totals[share][0] += seconds
            totals[share][1] += batch.tokens
            rows, cols = batch.input_ids.shape
            print(f"{b:5d}  {'shared' if share else 'plain':6s}  {rows:4d} x {cols:4d}  {forwarded:9d}  {batch.tokens:6d}"
                  f"  {seconds:7.1f}  {batch.tokens / seconds:8.0f}  {loss:.4f}")
    rate = {share: tokens / seconds for share, (seconds, tokens) in totals.items()}
    print(f"tokens/s: plain {rate[False]:.0f}, shared {rate[True]:.0f}; shared / plain = {rate[True] / rate[False]:.2f}x")
    epoch_tokens = sum(collators[False]([data.examples[i] for i in order[b:b + 8]]).tokens
                       for b in range(0, len(order), 8))
    for share, name in ((False, "plain"), (True, "shared")):
        print(f"one epoch ({epoch_tokens} tokens in batches of 8) at {name}'s rate: {epoch_tokens / rate[share] / 3600:.1f} h")


if __name__ == "__main__":
    main()
