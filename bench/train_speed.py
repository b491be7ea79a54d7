"""Training-step benchmark: tokens/s of one optimizer micro-batch, two ways on the same batches.

    python bench/train_speed.py [--batches 3] [--batch-size 2] [--threads N] [--config configs/default.toml]
                                [--compare prefix|checkpointing|precision]

Takes the recipe's data and model settings (AIDA train, the evaluation KB, LoRA, gradient checkpointing
on a CPU, bf16 autocast where training would use it), collates the first seeded-shuffled batches, and times forward + backward of each batch both
ways, alternating the two so that a noisy machine slows both alike:
- `--compare prefix` (default): plainly and with shared prefixes (`OneGenCollator(share_prefix=...)`);
- `--compare checkpointing`: shared prefixes, with and without gradient checkpointing (the peak memory of
  the process is printed at the end: without checkpointing is the larger);
- `--compare precision`: shared prefixes, in float32 and under bf16 autocast (`TrainConfig.bf16`, as
  training runs it: float32 weights, bf16 matrix products; fast on CPUs with AVX512-BF16 or AMX).
Tokens are the batch's sequences' tokens either way (a shared prefix counted for each sequence that has
it), so tokens/s compare the same work. The last lines project one epoch of the recipe's batch size from
the measured tokens/s (compare ratios, not machines).
"""
from __future__ import annotations

import argparse
import random
import resource
import time
import tomllib

import torch

from eval.corpora import load_dataset_file
from onegen.collate import OneGenCollator
from onegen.model import OneGen
from onegen.train_step import compute_loss
from onegen.training.config import TrainConfig
from onegen.training.data import prepare_data
from onegen.training.loop import uses_bf16
from onegen.training.trainable import make_trainable


def recipe_config(path: str, batch_size: int) -> TrainConfig:
    """The recipe's [train] settings with this benchmark's batch size (no output is written)."""
    with open(path, "rb") as f:
        values = tomllib.load(f)["train"]
    values.update(batch_size=batch_size, output="unused", gradient_checkpointing=not torch.cuda.is_available())
    return TrainConfig.from_dict(values)


def timed_step(model, batch, token_ids, device, bf16: bool) -> tuple[float, float]:
    """Seconds of forward + backward of `batch` (under bf16 autocast with `bf16`), and its loss."""
    batch = batch.to(device)
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = compute_loss(model, batch, token_ids).total
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return seconds, float(loss.detach())


def set_checkpointing(model, on: bool) -> None:
    """Turn gradient checkpointing of the (PEFT-wrapped) model on or off, as make_trainable sets it."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml", help="recipe whose [train] gives data and model")
    parser.add_argument("--batches", type=int, default=3, help="batches timed each way")
    parser.add_argument("--batch-size", type=int, default=2, help="examples per batch (the recipe trains with 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compare", choices=["prefix", "checkpointing", "precision"], default="prefix",
                        help="plain against shared prefixes, gradient checkpointing on against off, or float32 "
                             "against bf16 autocast")
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
    # each way: (its name, shared prefixes, gradient checkpointing, bf16 autocast); the first is the baseline
    checkpointing, bf16 = config.gradient_checkpointing, uses_bf16(config, device)
    ways = {"prefix": [("plain", False, checkpointing, bf16), ("shared", True, checkpointing, bf16)],
            "checkpointing": [("ckpt", True, True, bf16), ("no-ckpt", True, False, bf16)],
            "precision": [("fp32", True, checkpointing, False), ("bf16", True, checkpointing, True)]}[args.compare]
    totals = {name: [0.0, 0] for name, *_ in ways}  # seconds, tokens
    print(f"{len(data.examples)} examples; {args.batches} batches of {args.batch_size}; {torch.get_num_threads()} "
          f"threads; gradient checkpointing {config.gradient_checkpointing}; device {device.type}; "
          f"bf16 autocast {bf16} (--compare precision: without and with)")
    print("batch  way      rows x cols  forwarded  tokens  seconds  tokens/s  loss")
    for b in range(args.batches):
        examples = [data.examples[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
        for name, share, checkpointing, bf16 in ways if b % 2 == 0 else ways[::-1]:
            batch = collators[share](examples)
            set_checkpointing(model, checkpointing)
            seconds, loss = timed_step(model, batch, onegen.token_ids, device, bf16)
            forwarded = int(batch.attention_mask.sum()) + batch.prefix_ids.numel()
            totals[name][0] += seconds
            totals[name][1] += batch.tokens
            rows, cols = batch.input_ids.shape
            print(f"{b:5d}  {name:7s}  {rows:4d} x {cols:4d}  {forwarded:9d}  {batch.tokens:6d}"
                  f"  {seconds:7.1f}  {batch.tokens / seconds:8.0f}  {loss:.4f}")
    rate = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    (base, *_), (other, *_) = ways
    print(f"tokens/s: {base} {rate[base]:.0f}, {other} {rate[other]:.0f}; {other} / {base} = {rate[other] / rate[base]:.2f}x")
    print(f"peak memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
    epoch_tokens = sum(collators[False]([data.examples[i] for i in order[b:b + 8]]).tokens
                       for b in range(0, len(order), 8))
    for name in rate:
        print(f"one epoch ({epoch_tokens} tokens in batches of 8) at {name}'s rate: {epoch_tokens / rate[name] / 3600:.1f} h")


if __name__ == "__main__":
    main()
