"""`fit` under Ray Train (DESIGN sections 2 and 7): the driver's `train` and the worker's `train_loop_per_worker`.

`train(config, data)` puts the examples, the KB and the evaluation in the object store once and runs a
`TorchTrainer` whose workers each run `fit` with a `RayRuntime`: the worker's device and rank, the model
wrapped for DDP or FSDP (`ray.train.torch.prepare_model`), a DistributedSampler per worker, and every
epoch's checkpoint reported to Ray, which keeps the best by eval InKB F1 (always the latest too).
`resume=True` continues the run stored under `storage` from its latest checkpoint. At the end the driver
copies the best checkpoint's model to `output` with the tokenizer, training_args.json and the model card.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from onegen.training.card import write_output
from onegen.training.checkpoints import ARGS_FILE, RUN_NAME, Progress, best_of, check_run_folder, read_progress
from onegen.training.config import SCORE, TrainConfig
from onegen.training.data import TrainData
from onegen.training.loop import Evaluate, Runtime, fit
from onegen.training.trainable import base_reference, fsdp_kwargs, tokenizer_with_tokens


class RayRuntime(Runtime):
    """`fit` inside a Ray Train worker: the few steps that differ from a plain process."""

    def __init__(self, config: TrainConfig):  # the driver (`train`) checked the run folder and keeps checkpoints
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.set_num_threads(config.cpus_per_worker)

    def resume_from(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # the run's latest, when Ray restored it
        return None if checkpoint is None else Path(checkpoint.to_directory())

    def prepare_model(self, module: nn.Module, config: TrainConfig) -> nn.Module:
        import ray.train.torch

        sharded = config.strategy == "fsdp" and self.world > 1
        return ray.train.torch.prepare_model(  # move to the worker's device, wrap in DDP / FSDP
            module,
            move_to_device=not sharded,  # FSDP moves each shard itself
            parallel_strategy=config.strategy,
            parallel_strategy_kwargs=fsdp_kwargs(module.model, self.device) if sharded else None,
        )

    def prepare_loader(self, loader):
        import ray.train.torch

        # a DistributedSampler per worker when there are several; batches are moved by the loop
        return ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    def report(self, metrics: dict, folder: Path, epoch: int) -> None:
        import ray.train
        from ray.train import Checkpoint

        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if self.rank == 0 else None)

    def final_checkpoint(self) -> Path | None:
        return None  # the driver picks among the checkpoints Ray kept


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker: `fit` with this worker's RayRuntime, its data from the object store."""
    import ray

    config = TrainConfig.from_dict(loop_config["config"])
    evaluate = None if loop_config["evaluate"] is None else ray.get(loop_config["evaluate"])
    fit(config, ray.get(loop_config["data"]), evaluate=evaluate, runtime=RayRuntime(config))


@dataclass
class TrainResult:
    """What `train` returns."""

    output: Path  # the final model folder
    checkpoint: Path  # the checkpoint its weights come from (best eval F1, else the latest)
    progress: Progress  # counters and per-epoch history of the run
    data: dict  # sizes of the training (and eval) data


def train(config: TrainConfig, data: TrainData, *, evaluate: Evaluate | None = None,
          made_by: str | None = None) -> TrainResult:
    """Run `fit` as a Ray Train job on the connected Ray cluster and write the final model to `config.output`.

    `evaluate` scores each epoch's checkpoint (rank 0), e.g. eval.epoch_eval.EpochEvaluation; `made_by`
    goes on the model card.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    config = replace(config, base=base_reference(config.base))
    run_folder = check_run_folder(config)
    tokenizer, _ = tokenizer_with_tokens(config.base)
    run_folder.mkdir(parents=True, exist_ok=True)
    (run_folder / ARGS_FILE).write_text(json.dumps(asdict(config), indent=1))
    # data and evaluation go through the object store once, not pickled into every worker's config
    loop_config = {"config": asdict(config), "data": ray.put(data),
                   "evaluate": None if evaluate is None else ray.put(evaluate)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(  # one GPU per worker with use_gpu
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(config.storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.num_to_keep,
                checkpoint_score_attribute=SCORE if evaluate is not None else None,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=0),  # a crash ends the run; --resume continues it
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as latest:
        progress = read_progress(latest)
    best = result.checkpoint
    if evaluate is not None:
        by_path = {Path(c.path): (c, metrics) for c, metrics in result.best_checkpoints}
        best = by_path[best_of({path: metrics for path, (_, metrics) in by_path.items()})][0]
    with best.as_directory() as folder:
        output = write_output(config, Path(folder), tokenizer, progress, data.sizes,
                              time.perf_counter() - started, made_by)
    return TrainResult(output=output, checkpoint=Path(best.path), progress=progress, data=data.sizes)
