"""The training loop: `fit(config, data)` trains in this process (one device, no Ray), epoch by epoch,
checkpointing and (optionally) evaluating after each, then writes the final model and its card.

Ray Train's worker (onegen/training/ray_train.py) runs the same `fit` with a `Runtime` of its own: it
wraps the model for DDP/FSDP, shards the batches, reports to Ray and leaves the final save to the driver.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from onegen.collate import OneGenCollator
from onegen.model import OneGen
from onegen.shared_prefix import SDPA_NAMES
from onegen.training.card import write_output
from onegen.training.checkpoints import (
    ARGS_FILE, CKPT_MODEL, LocalCheckpoints, Progress, check_run_folder, load_train_state, load_trained_weights,
    save_checkpoint, write_progress,
)
from onegen.training.config import TrainConfig
from onegen.training.data import TrainData
from onegen.training.trainable import OneGenLoss, base_reference, is_fsdp, make_trainable

LOG = logging.getLogger(__name__)
LOG_EVERY = 10  # optimizer steps between progress lines
Evaluate = Callable[[OneGen], dict]  # the model loaded back from a checkpoint -> metrics, SCORE among them


def _cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it where it can."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: torch.device, world_size: int) -> dict:
    """Rank 0's view of where the run trains."""
    info = {"workers": world_size, "device": str(device.type), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A shuffled order whose every `batch_size` run holds examples of similar length.

    The shuffled examples are cut into chunks of CHUNK_BATCHES batches; each chunk is sorted by length and cut
    into batches, and the full batches are shuffled (a short last one stays last). Every example comes once per
    epoch; the order follows `generator`, seeded before each epoch as the plain shuffle's is.
    """

    CHUNK_BATCHES = 50  # batches sorted together: a wider chunk pads less but shuffles less

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator):
        self.lengths = lengths  # each example's length in tokens
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        chunk = self.CHUNK_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=self.lengths.__getitem__)
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[b]
        for batch in short:
            yield from batch


def shuffled_loader(examples, collator, config: TrainConfig) -> torch.utils.data.DataLoader:
    """Shuffled batches of `config.batch_size` examples, grouped by length with `config.group_by_length`; seed
    `loader.generator` before each epoch."""
    generator = torch.Generator()
    if config.group_by_length:
        sampler = LengthGroupedSampler([len(e.input_ids) for e in examples], config.batch_size, generator)
        return torch.utils.data.DataLoader(examples, batch_size=config.batch_size, sampler=sampler,
                                           collate_fn=collator, generator=generator)
    return torch.utils.data.DataLoader(examples, batch_size=config.batch_size, shuffle=True,
                                       collate_fn=collator, generator=generator)



def optimizer_and_scheduler(model: nn.Module, config: TrainConfig, batches_per_epoch: int):
    """AdamW over the trainable parameters, linear warm-up then linear decay over the run's optimizer steps
    (those of `schedule_epochs` when set, at most `max_steps`)."""
    from transformers import get_linear_schedule_with_warmup

    total_steps = math.ceil(batches_per_epoch / config.grad_accum) * (config.schedule_epochs or config.epochs)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast beats float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether training on `device` runs under bf16 autocast: `config.bf16`, or when unset, on GPUs and on
    CPUs with native bf16 (`cpu_has_bf16`)."""
    if config.bf16 is not None:
        return config.bf16
    return device.type == "cuda" or cpu_has_bf16()


def shares_prefix(config: TrainConfig, model: nn.Module) -> bool:
    """Whether batches forward their shared prompt prefixes once (onegen.shared_prefix): asked for, and
    possible (sdpa attention; not FSDP, where it is untested)."""
    return config.share_prefix and config.strategy != "fsdp" and model.config._attn_implementation in SDPA_NAMES


def train_epoch(model: nn.Module, loader, optimizer, scheduler, progress: Progress, config: TrainConfig,
                device: torch.device, log: bool = True) -> dict:
    """One pass over `loader` (stopping at `config.max_steps`): `model(batch)` gives the LossOutput, one
    optimizer step every `grad_accum` micro-batches. Updates `progress.epoch` and `.step`; returns this
    worker's metrics (mean losses, tokens, tokens/s, seconds)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(config, device))
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    params = [p for p in model.parameters() if p.requires_grad]
    started = time.perf_counter()
    model.train()
    sums = {"loss": 0.0, "generation": 0.0, "retrieval": 0.0}
    micro_batches = tokens = 0
    for i, batch in enumerate(loader):
        batch = batch.to(device)
        sync = (i + 1) % config.grad_accum == 0 or i + 1 == len(loader)
        no_sync = model.no_sync() if distributed and not sync else contextlib.nullcontext()
        with no_sync:
            with autocast:
                out = model(batch)  # LossOutput of the batch
            (out.total / config.grad_accum).backward()
        for key, value in (("loss", out.total), ("generation", out.generation), ("retrieval", out.retrieval)):
            sums[key] += float(value.detach())
        micro_batches += 1
        tokens += batch.tokens  # the sequences' tokens, a shared prefix counted for each (same work done)
        if not sync:
            continue
        if is_fsdp(model):  # the norm over all shards
            model.clip_grad_norm_(config.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        if log and progress.step % LOG_EVERY == 0:
            LOG.info("step %d: loss %.4f, %.0f tokens/s", progress.step, sums["loss"] / micro_batches,
                     tokens / (time.perf_counter() - started))
        if config.max_steps is not None and progress.step >= config.max_steps:
            break  # the run ends inside this epoch; it still counts as one
    seconds = time.perf_counter() - started
    progress.epoch += 1
    return {"epoch": progress.epoch, "step": progress.step, "lr": scheduler.get_last_lr()[0],
            **{f"train_{k}": v / max(1, micro_batches) for k, v in sums.items()},
            "tokens": tokens, "tokens_per_second": tokens / seconds, "epoch_seconds": seconds}


class Runtime:
    """Where `fit` runs: this process, one device (CUDA when `config.use_gpu`), checkpoints kept on disk
    (`LocalCheckpoints`); after the last epoch `fit` writes the best checkpoint's model to `config.output`.

    Ray Train's worker passes a subclass (ray_train.RayRuntime) that overrides these methods.
    """

    rank = 0  # this process's rank among the workers; rank 0 writes checkpoints and evaluates
    world = 1  # workers training together

    def __init__(self, config: TrainConfig):
        if config.use_gpu and not torch.cuda.is_available():
            raise ValueError("use_gpu (--use-gpu) is set but torch sees no CUDA device")
        if config.num_workers > 1:
            raise ValueError(f"num_workers {config.num_workers} needs Ray Train (jobs/train.py without --no-ray); "
                             "a plain process trains with one")
        self.device = torch.device("cuda" if config.use_gpu else "cpu")
        run = check_run_folder(config)
        run.mkdir(parents=True, exist_ok=True)
        (run / ARGS_FILE).write_text(json.dumps(asdict(config), indent=1))
        self.checkpoints = LocalCheckpoints(run, config.num_to_keep)

    def resume_from(self) -> Path | None:
        """The checkpoint folder to continue from (the latest), or None to start."""
        return self.checkpoints.latest()

    def prepare_model(self, module: nn.Module, config: TrainConfig) -> nn.Module:
        """The loss module on this process's device (Ray: wrapped in DDP or FSDP)."""
        return module.to(self.device)

    def prepare_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """The loader of this process's batches (Ray: a DistributedSampler's share)."""
        return loader

    def report(self, metrics: dict, folder: Path, epoch: int) -> None:
        """Keep the finished checkpoint in `folder` (a temporary folder) as epoch `epoch`'s."""
        self.checkpoints.add(folder, epoch)

    def final_checkpoint(self) -> Path | None:
        """The checkpoint whose model becomes `config.output` (best eval score, else the latest); None: the
        caller writes the output itself (Ray's driver)."""
        return self.checkpoints.best()


def fit(config: TrainConfig, data: TrainData, *, evaluate: Evaluate | None = None, runtime: Runtime | None = None,
        made_by: str | None = None) -> Progress:
    """Train OneGen on `data` as `config` says; returns the run's counters and per-epoch history.

    Data -> trainable model (from the base, `config.init`, or the run's latest checkpoint with
    `config.resume`) -> epochs (mining negatives first with `config.mine_negatives`) -> a checkpoint after
    each, scored by `evaluate(model loaded back)` when given -> the best checkpoint's model, tokenizer,
    training_args.json and model card in `config.output` (`made_by` says on the card how it was made).
    Without `runtime` it runs in this process on one device, without Ray.
    """
    started = time.perf_counter()
    config = replace(config, base=base_reference(config.base))
    runtime = runtime or Runtime(config)
    torch.manual_seed(config.seed)

    # [1] Model: the base in float32 (bf16 autocast on GPU), made trainable, restored from a checkpoint.
    onegen = OneGen.from_pretrained(config.base, device="cpu", dtype=torch.float32)
    model = make_trainable(onegen.model, onegen.token_ids, config)
    resume = runtime.resume_from() if config.resume else None
    if resume is not None:
        load_trained_weights(model, resume / CKPT_MODEL, lora=config.lora is not None)
    elif config.init:  # continue a saved model: its weights, this run's learning-rate schedule
        load_trained_weights(model, Path(config.init), lora=config.lora is not None)
    onegen.model = model  # save_pretrained sees the PEFT model (adapter + token rows)
    module = runtime.prepare_model(
        OneGenLoss(model, onegen.token_ids, config.loss, config.temperature, config.retrieval_weight), config)
    onegen.device = runtime.device  # where the weights are now (mining and evaluation run there)

    # [2] Data: shuffled batches of examples, their entity rows packed by the collator.
    collator = OneGenCollator(onegen.tokenizer, onegen.token_ids, data.entities,
                              num_negatives=config.num_negatives, seed=config.seed,
                              share_prefix=shares_prefix(config, onegen.model))
    loader = runtime.prepare_loader(shuffled_loader(data.examples, collator, config))
    optimizer, scheduler = optimizer_and_scheduler(module, config, len(loader))
    progress = Progress(hardware={**hardware(runtime.device, runtime.world), "bf16": uses_bf16(config, runtime.device)})
    if resume is not None:
        progress = load_train_state(resume, module, optimizer, scheduler)
        LOG.info("resumed at epoch %d, step %d", progress.epoch, progress.step)

    # [3] Epochs, each ended by a checkpoint (every rank joins; rank 0 writes and evaluates).
    while progress.epoch < config.epochs and (config.max_steps is None or progress.step < config.max_steps):
        epoch_start = time.perf_counter()
        mining = None
        if config.mine_negatives:  # the same on every worker: same model, same examples
            mining, examples = mine(onegen, data, config)
            loader = runtime.prepare_loader(shuffled_loader(examples, collator, config))  # as many batches
        if runtime.world > 1:
            loader.sampler.set_epoch(progress.epoch)
        else:
            loader.generator.manual_seed(config.seed * 1000 + progress.epoch)  # same order after a resume
        metrics = train_epoch(module, loader, optimizer, scheduler, progress, config, runtime.device,
                              log=runtime.rank == 0)
        if mining is not None:
            metrics.update(mining)
        metrics["tokens_per_second"] *= runtime.world  # every worker trains on as many tokens
        progress.tokens += metrics.pop("tokens") * runtime.world
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_checkpoint(folder, module, onegen, optimizer, scheduler, runtime.rank)
            if runtime.rank == 0 and evaluate is not None:
                metrics.update(evaluate_checkpoint(folder, evaluate, runtime.device))
            progress.train_seconds += time.perf_counter() - epoch_start
            metrics["wall_seconds"] = progress.train_seconds
            progress.history.append(metrics)
            if runtime.rank == 0:
                write_progress(folder, progress)
            LOG.info("epoch %d: %s", progress.epoch, metrics)
            runtime.report(metrics, folder, progress.epoch)

    # [4] The output: the chosen checkpoint's model, the tokenizer, training_args.json, the card.
    final = runtime.final_checkpoint()
    if final is not None:
        write_output(config, final, onegen.tokenizer, progress, data.sizes, time.perf_counter() - started, made_by)
    return progress


def mine(onegen: OneGen, data: TrainData, config: TrainConfig) -> tuple[dict, list]:
    """This epoch's negatives, mined with the model as it stands (onegen.mining); returns metrics and examples."""
    from kb.ids import Redirects
    from onegen.mining import mine_with_model

    started = time.perf_counter()
    canonical = Redirects.from_tsv(config.redirects).resolve if config.redirects else str
    mined, report = mine_with_model(onegen, data.examples, list(data.entities.values()),
                                    num_negatives=config.num_negatives, every_mention=config.every_mention,
                                    canonical=canonical, batch_size=config.batch_size)
    if onegen.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"mined_gold_first": report.gold_first_rate, "mining_seconds": time.perf_counter() - started}, mined


def evaluate_checkpoint(folder: Path, evaluate: Evaluate, device: torch.device) -> dict:
    """Score the model just saved in `folder` (loaded back as a user would) with `evaluate`."""
    onegen = OneGen.from_pretrained(str(folder / CKPT_MODEL), device=device)
    started = time.perf_counter()
    metrics = evaluate(onegen)
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics
