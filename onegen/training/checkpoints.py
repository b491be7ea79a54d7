"""Checkpoints: what one holds (model, optimizer state, counters), writing and restoring it, the run folder.

A checkpoint folder holds the model as `OneGen.save_pretrained` writes it (CKPT_MODEL), the optimizer and
scheduler state (CKPT_STATE) and the counters with the per-epoch history (CKPT_PROGRESS). Under Ray Train,
Ray keeps them; in a plain process (`fit`), `LocalCheckpoints` keeps them in the same run folder layout.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from onegen.model import OneGen
from onegen.training.config import SCORE, TrainConfig
from onegen.training.trainable import is_fsdp

RUN_NAME = "onegen-train"  # run folder under `storage`
CKPT_MODEL = "model"  # OneGen.save_pretrained folder inside a checkpoint
CKPT_STATE = "train_state.pt"  # optimizer + scheduler state dicts (tensors only; loaded with weights_only)
CKPT_PROGRESS = "progress.json"  # counters, per-epoch history, hardware
ARGS_FILE = "training_args.json"  # TrainConfig of the run, beside the weights
RESUME_MUST_MATCH = ("base", "lora", "lora_alpha", "strategy", "train", "split", "kb", "max_length", "loss")


@dataclass
class Progress:
    """Training counters carried from checkpoint to checkpoint (progress.json)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # real (unpadded) tokens trained on, all workers
    train_seconds: float = 0.0  # wall time in the training loop, evaluation and checkpointing included
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    hardware: dict = field(default_factory=dict)  # where it ran (rank 0's view)



def save_checkpoint(directory: Path, model: nn.Module, onegen: OneGen, optimizer, scheduler, rank: int) -> None:
    """Write the model (OneGen.save_pretrained) and the optimizer/scheduler state to `directory`.

    Every rank calls it (FSDP gathers weights and optimizer state collectively); rank 0 writes."""
    optim_state = optimizer.state_dict()
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optim_state = FSDP.optim_state_dict(model, optimizer)
        sharded = torch.distributed.get_world_size() > 1  # one process: FSDP keeps whole parameters (NO_SHARD)
        gather = FSDP.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=sharded)
    else:
        gather = contextlib.nullcontext()
    with gather:
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            with _fsdp_units_unwrapped(onegen.model) if is_fsdp(model) else contextlib.nullcontext():
                onegen.save_pretrained(directory / CKPT_MODEL)
    if rank == 0:
        torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict()}, directory / CKPT_STATE)


@contextlib.contextmanager
def _fsdp_units_unwrapped(model: nn.Module):
    """Within `summon_full_params`: `model` with each FSDP unit inside it replaced by the module it wraps.

    PEFT picks the adapter weights by module name, and a unit inside the model adds a path segment to
    those names (PEFT only strips a leading one): saved through the units, the adapter lost every LoRA
    weight of the decoder layers."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, FSDP)]
    for parent, name, unit in swapped:
        setattr(parent, name, unit.module)
    try:
        yield
    finally:
        for parent, name, unit in swapped:
            setattr(parent, name, unit)


def write_progress(directory: Path, progress: Progress) -> None:
    """Write the counters and history of a checkpoint."""
    (directory / CKPT_PROGRESS).write_text(json.dumps(asdict(progress), indent=1))


def read_progress(directory: Path) -> Progress:
    """The counters and history of a checkpoint."""
    return Progress(**json.loads((Path(directory) / CKPT_PROGRESS).read_text()))


def load_model_state(model: nn.Module, directory: Path, config: TrainConfig) -> None:
    """Put a checkpoint's trained weights into a freshly built `make_trainable` model (before wrapping)."""
    load_trained_weights(model, directory / CKPT_MODEL, lora=config.lora is not None)


def load_trained_weights(model: nn.Module, folder: Path, *, lora: bool) -> None:
    """Put the weights of a saved model folder (`OneGen.save_pretrained`: an adapter, or full weights)
    into a freshly built `make_trainable` model of the same kind."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise ValueError(f"checkpoint {folder} has adapter weights this model lacks: {result.unexpected_keys[:5]}")
        return
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    _, unexpected = model.load_state_dict(state, strict=False)  # tied weights are saved once
    if unexpected:
        raise ValueError(f"checkpoint {folder} has weights this model lacks: {unexpected[:5]}")


def load_train_state(directory: Path, model: nn.Module, optimizer, scheduler) -> Progress:
    """Restore optimizer, scheduler and counters from a checkpoint (after the model is wrapped)."""
    state = torch.load(directory / CKPT_STATE, map_location="cpu", weights_only=True)
    optim_state = state["optimizer"]
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optim_state = FSDP.optim_state_dict_to_load(model, optimizer, optim_state)
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(state["scheduler"])
    return read_progress(directory)



def check_run_folder(config: TrainConfig) -> Path:
    """The run folder under `config.storage_path`, checked against `config.resume`; returns it.

    Without resume an existing run is an error (it would be mixed with this one); with resume the run must
    exist and its stored settings must match the ones that shape the weights (RESUME_MUST_MATCH).
    """
    run = config.storage_path / RUN_NAME
    if config.resume and not run.is_dir():
        raise FileNotFoundError(f"nothing to resume: no run folder at {run}; start without --resume")
    if not config.resume and run.exists():
        raise FileExistsError(
            f"a training run already exists at {run}: pass --resume to continue it, or remove the folder "
            "(or choose another --output / --storage) to start over"
        )
    if config.resume:
        saved = run / ARGS_FILE
        if saved.is_file():
            before = json.loads(saved.read_text())
            changed = {k: (before.get(k), getattr(config, k)) for k in RESUME_MUST_MATCH if before.get(k) != getattr(config, k)}
            if changed:
                raise ValueError(f"--resume with settings that differ from the stored run (before, now): {changed}")
    return run


def best_of(history_by_folder: dict[Path, dict]) -> Path:
    """The checkpoint folder with the best eval score (among equals the later epoch); the latest without scores."""
    return max(history_by_folder, key=lambda f: (history_by_folder[f].get(SCORE, -1.0), history_by_folder[f]["epoch"]))


class LocalCheckpoints:
    """Checkpoints of a plain-process run (`fit`), kept as Ray Train keeps them: RUN/checkpoint_NNNNNN folders,
    the best `num_to_keep` by eval score (by epoch without one) and the latest, resumable from the latest."""

    def __init__(self, run: Path, num_to_keep: int):
        self.run = run
        self.num_to_keep = num_to_keep

    def _kept(self) -> dict[Path, dict]:
        """Finished checkpoints (their progress.json is written last) and their last epoch's metrics."""
        return {c: read_progress(c).history[-1] for c in sorted(self.run.glob("checkpoint_*"))
                if (c / CKPT_PROGRESS).is_file()}

    def latest(self) -> Path | None:
        """The latest finished checkpoint, or None."""
        kept = self._kept()
        return max(kept, key=lambda c: kept[c]["epoch"]) if kept else None

    def best(self) -> Path | None:
        """The checkpoint whose model becomes the output (`best_of`), or None."""
        kept = self._kept()
        return best_of(kept) if kept else None

    def add(self, folder: Path, epoch: int) -> None:
        """Copy a finished checkpoint in as epoch `epoch`'s, then drop the worst beyond `num_to_keep`."""
        shutil.copytree(folder, self.run / f"checkpoint_{epoch:06d}", dirs_exist_ok=True)
        kept = self._kept()
        latest = max(kept, key=lambda c: kept[c]["epoch"])
        ranked = sorted(kept, key=lambda c: (kept[c].get(SCORE, -1.0), kept[c]["epoch"]), reverse=True)
        keep = {latest, *ranked[: self.num_to_keep]}
        for stale in set(kept) - keep:
            shutil.rmtree(stale)

