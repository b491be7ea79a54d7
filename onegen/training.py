"""Fine-tuning OneGen with Ray Train (DESIGN sections 2 and 7): config, per-worker loop, checkpoints, model card.

`train(config)` runs on the driver: it builds the OneGen examples once (onegen.data), puts them in the
object store, and runs a `TorchTrainer` whose workers each run `train_loop_per_worker`. A worker loads
the base, makes it trainable (LoRA on every linear layer plus the three OneGen token rows through
PEFT's trainable tokens, or full fine-tuning), wraps it for DDP or FSDP (`ray.train.torch.prepare_model`)
and trains with the OneGen loss (onegen.train_step). After each epoch rank 0 writes a checkpoint
(the model as `OneGen.save_pretrained` writes it, plus optimizer state and counters), scores it on the
eval split when one is given, and every rank calls `ray.train.report`. Ray keeps the best checkpoints by
eval InKB F1 (always the latest too); `resume=True` continues the run stored under `storage` from its
latest checkpoint. At the end the best checkpoint's model is copied to `output` with the tokenizer,
`training_args.json` and a model card (README.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from onegen.spans import Document
from kb.entity import Entity
from onegen.default_model import DEFAULT_MODEL_NAME, default_model_dir
from onegen.linker import ExactSearch, link_texts
from onegen.linker_config import LinkerConfig
from onegen.loss import RETRIEVAL_KINDS
from onegen.model import OneGen, TokenIds, add_onegen_tokens, token_rows

LOG = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
SCORE = "eval_inkb_f1"  # checkpoint score: InKB micro F1 on the eval split
RUN_NAME = "onegen-train"  # Ray Train run folder under `storage`
CKPT_MODEL = "model"  # OneGen.save_pretrained folder inside a checkpoint
CKPT_STATE = "train_state.pt"  # optimizer + scheduler state dicts (tensors only; loaded with weights_only)
CKPT_PROGRESS = "progress.json"  # counters, per-epoch history, hardware
ARGS_FILE = "training_args.json"  # TrainConfig of the run, beside the weights
CARD_FILE = "README.md"
LOG_EVERY = 10  # optimizer steps between progress lines
RESUME_MUST_MATCH = ("base", "lora", "lora_alpha", "strategy", "train", "split", "kb", "max_length", "loss")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as training_args.json beside the weights."""

    train: str  # training documents: AIDA TSV or NIF file
    kb: str  # KB JSONL (DESIGN section 4): positives and negatives are drawn from it
    output: str  # folder of the final model (adapter or full weights), tokenizer and model card
    base: str = DEFAULT_MODEL_NAME  # base model: embedded default name, model folder or cached hub id
    init: str | None = None  # saved model of the same kind (adapter or full weights) to start from; None: the base
    split: str | None = "train"  # AIDA split of `train` (None: every document; must be None for NIF)
    aliases: str | None = None  # mention<TAB>entity<TAB>count table for hard negatives (same-alias entities)
    lora: int | None = 16  # LoRA rank on every linear layer; None = full fine-tuning
    lora_alpha: int | None = None  # LoRA alpha; None = 2 * rank
    lora_dropout: float = 0.05
    loss: str = "bpr"  # retrieval loss: "bpr" (4 hard negatives per anchor) or "infonce" (in-batch)
    temperature: float = 0.02  # InfoNCE temperature
    retrieval_weight: float = 1.0  # lambda_ret: the retrieval loss's weight next to the generation CE's 1
    epochs: int = 1
    lr: float | None = None  # peak learning rate; None = 2e-4 with LoRA, 5e-5 for full fine-tuning
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_ratio: float = 0.03  # linear warm-up over this fraction of the steps, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping
    max_length: int = 1024  # tokens per training example (prompt + marked target)
    batch_size: int = 4  # examples per worker per micro-batch (entity rows come on top)
    grad_accum: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute layer activations in backward: far less memory, ~1.3x compute
    num_negatives: int = 4  # hard negatives per anchor
    mine_negatives: bool = False  # before each epoch, the entities the model ranks above the gold one lead each
    #                               anchor's negatives (onegen.mining; every worker embeds the whole KB)
    num_workers: int = 1  # Ray Train workers (one GPU each with use_gpu)
    cpus_per_worker: int = 1  # CPU cores per worker; torch uses as many threads (Ray's default for a worker is 1)
    use_gpu: bool = False  # train on GPUs, bf16 autocast over float32 master weights
    strategy: str = "ddp"  # "ddp" (replicas) or "fsdp" (sharded, for 7B models; GPUs only)
    eval: str | None = None  # eval documents (AIDA TSV or NIF); None = no per-epoch evaluation
    eval_split: str | None = "testa"  # AIDA split of `eval` (None for NIF)
    eval_docs: int | None = None  # score a seeded sample of this many eval documents (None: all)
    eval_kb_size: int | None = None  # link against the eval gold entities plus random KB entities up to this size
    eval_batch_size: int = 8  # texts per annotate call
    redirects: str | None = None  # from<TAB>to title redirects applied to gold and predictions when scoring
    max_steps: int | None = None  # stop after this many optimizer steps in all (checkpointing there)
    seed: int = 0
    resume: bool = False  # continue the run stored under `storage` from its latest checkpoint
    storage: str | None = None  # Ray Train storage folder (checkpoints); None = OUTPUT/ray
    num_to_keep: int = 2  # checkpoints kept (the best by eval F1, or the latest; the latest always)

    def __post_init__(self):
        if self.loss not in RETRIEVAL_KINDS:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {RETRIEVAL_KINDS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.strategy == "fsdp" and not self.use_gpu and self.num_workers > 1:
            raise ValueError("strategy 'fsdp' shards over GPUs: pass use_gpu (--use-gpu) or use strategy 'ddp' on CPU")
        for name in ("epochs", "batch_size", "grad_accum", "num_workers", "cpus_per_worker", "num_to_keep", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mine_negatives and self.strategy == "fsdp":
            raise ValueError("mine_negatives runs the whole model on each worker, which FSDP shards: use strategy 'ddp'")
        if not self.retrieval_weight > 0:
            raise ValueError(f"retrieval_weight must be > 0 (0 would train no retrieval), got {self.retrieval_weight}")
        if self.lora is not None and self.lora < 1:
            raise ValueError(f"lora rank must be >= 1 (or None for full fine-tuning), got {self.lora}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from plain values; an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.lora is not None else 5e-5

    @property
    def storage_path(self) -> Path:
        return Path(self.storage or Path(self.output) / "ray").resolve()


@dataclass
class Progress:
    """Training counters carried from checkpoint to checkpoint (progress.json)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # real (unpadded) tokens trained on, all workers
    train_seconds: float = 0.0  # wall time in the training loop, evaluation and checkpointing included
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    hardware: dict = field(default_factory=dict)  # where it ran (rank 0's view)


# --- the model ---


def base_reference(base: str | None) -> str:
    """The base id as it is recorded: the embedded default name, an absolute folder, or the hub id."""
    if base in (None, DEFAULT_MODEL_NAME):
        return DEFAULT_MODEL_NAME
    folder = Path(base).expanduser()
    return str(folder.resolve()) if folder.is_dir() else base


def tokenizer_with_tokens(base: str):
    """The base tokenizer with the OneGen tokens and their ids, without loading weights (a meta-device model)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = default_model_dir() if base == DEFAULT_MODEL_NAME else base
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return tokenizer, add_onegen_tokens(skeleton, tokenizer)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    """The attribute name (last path component) of `module` inside `model`."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def make_trainable(model: nn.Module, token_ids: TokenIds, config: TrainConfig) -> nn.Module:
    """LoRA on every linear layer plus the OneGen token rows (PEFT trainable tokens), or every weight.

    The token rows are trained in the input embedding and, when the output head is not tied to it,
    in the head too; PEFT stores them in the adapter, so `OneGen.from_pretrained(adapter)` restores them.
    """
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora is None:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    ids = [token_ids.link, token_ids.entity, token_ids.cont]
    embed, head = token_rows(model)
    rows = {_module_name(model, model.get_input_embeddings()): ids}
    if head is not None:  # untied head: its rows of the new tokens must learn too ([LK] is predicted)
        rows[_module_name(model, model.get_output_embeddings())] = ids
    lora = LoraConfig(
        r=config.lora,
        lora_alpha=config.lora_alpha or 2 * config.lora,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # every linear layer but the output head
        trainable_token_indices=rows,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class OneGenLoss(nn.Module):
    """The model with its OneGen loss as one module: DDP and FSDP wrap this, so their forward runs around
    `compute_loss` (which calls the decoder and the LM head itself, not the model's own forward)."""

    def __init__(self, model: nn.Module, token_ids: TokenIds, kind: str = "bpr", temperature: float = 0.02,
                 retrieval_weight: float = 1.0):
        super().__init__()
        self.model = model
        self.token_ids = token_ids
        self.kind = kind
        self.temperature = temperature
        self.retrieval_weight = retrieval_weight  # lambda_ret

    def forward(self, batch):
        from onegen.train_step import compute_loss

        return compute_loss(self.model, batch, self.token_ids, kind=self.kind, temperature=self.temperature,
                            lambda_ret=self.retrieval_weight)


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def fsdp_kwargs(model: nn.Module, device: torch.device) -> dict:
    """FullyShardedDataParallel arguments: one shard unit per decoder layer, bf16 compute, original
    parameters kept (LoRA mixes frozen and trainable weights in one unit)."""
    import functools

    from torch.distributed.fsdp import MixedPrecision
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not layers:
        raise ValueError(
            f"{type(base).__name__} names no decoder layer class in _no_split_modules ({sorted(names)}); "
            "FSDP needs one to shard by layer: use strategy 'ddp'"
        )
    return {
        "auto_wrap_policy": functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers),
        "mixed_precision": MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
        "use_orig_params": True,
        "device_id": device,
    }


# --- checkpoints ---


def save_checkpoint(directory: Path, model: nn.Module, onegen: OneGen, optimizer, scheduler, rank: int) -> None:
    """Write the model (OneGen.save_pretrained) and the optimizer/scheduler state to `directory`.

    Every rank calls it (FSDP gathers weights and optimizer state collectively); rank 0 writes."""
    optim_state = optimizer.state_dict()
    if _is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optim_state = FSDP.optim_state_dict(model, optimizer)
        sharded = torch.distributed.get_world_size() > 1  # one process: FSDP keeps whole parameters (NO_SHARD)
        gather = FSDP.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=sharded)
    else:
        gather = contextlib.nullcontext()
    with gather:
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            with _fsdp_units_unwrapped(onegen.model) if _is_fsdp(model) else contextlib.nullcontext():
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
    if _is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optim_state = FSDP.optim_state_dict_to_load(model, optimizer, optim_state)
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(state["scheduler"])
    return read_progress(directory)


# --- evaluation ---


def evaluate(onegen: OneGen, docs: list[Document], entities: dict[str, Entity], *, batch_size: int = 8,
             redirects: str | None = None) -> dict:
    """InKB micro precision/recall/F1 (A2KB, strong match, eval/scorer) of exact linking over `entities`."""
    from eval.scorer import score
    from kb.ids import Redirects

    kb_ids = list(entities)
    kb_vectors = onegen.embed_entities([entities[i] for i in kb_ids])  # (N, D)
    retriever = ExactSearch(kb_ids, kb_vectors)
    predicted = link_texts(onegen, [d.text for d in docs], retriever, top_k=1, nil_threshold=-math.inf,
                           batch_size=batch_size)
    report = score(docs, {d.doc_id: p for d, p in zip(docs, predicted)},
                   redirects=Redirects.from_tsv(redirects) if redirects else None)
    micro = report.inkb.micro
    return {"eval_inkb_precision": micro.precision, "eval_inkb_recall": micro.recall, SCORE: micro.f1,
            "eval_docs": len(docs), "eval_predicted": sum(map(len, predicted))}


def eval_subset(docs: list[Document], entities: dict[str, Entity], config: TrainConfig):
    """The eval documents (a seeded sample of `eval_docs`) and the entities they are linked against."""
    rng = random.Random(config.seed)
    if config.eval_docs is not None and config.eval_docs < len(docs):
        keep = set(rng.sample(range(len(docs)), config.eval_docs))
        docs = [d for i, d in enumerate(docs) if i in keep]
    if config.eval_kb_size is None or config.eval_kb_size >= len(entities):
        return docs, entities
    gold = {a.entity_id for d in docs for a in d.mentions if a.entity_id in entities}
    rest = sorted(set(entities) - gold)
    fill = rng.sample(rest, max(0, config.eval_kb_size - len(gold)))
    return docs, {i: entities[i] for i in sorted(gold) + fill}


# --- the per-worker loop ---


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _hardware(device: torch.device, world_size: int) -> dict:
    """Rank 0's view of where the run trains."""
    info = {"workers": world_size, "device": str(device.type), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def shuffled_loader(examples, collator, config: TrainConfig) -> torch.utils.data.DataLoader:
    """Shuffled batches of `config.batch_size` examples; seed `loader.generator` before each epoch."""
    return torch.utils.data.DataLoader(examples, batch_size=config.batch_size, shuffle=True,
                                       collate_fn=collator, generator=torch.Generator())


def _data_loader(examples, collator, config: TrainConfig) -> torch.utils.data.DataLoader:
    import ray.train.torch

    # [2] Ray: a DistributedSampler per worker when there are several; batches are moved by us.
    return ray.train.torch.prepare_data_loader(shuffled_loader(examples, collator, config), move_to_device=False)


def optimizer_and_scheduler(model: nn.Module, config: TrainConfig, batches_per_epoch: int):
    """AdamW over the trainable parameters, linear warm-up then linear decay over the run's optimizer steps."""
    from transformers import get_linear_schedule_with_warmup

    total_steps = math.ceil(batches_per_epoch / config.grad_accum) * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def train_epoch(model: nn.Module, loader, optimizer, scheduler, progress: Progress, config: TrainConfig,
                device: torch.device, log: bool = True) -> dict:
    """One pass over `loader` (stopping at `config.max_steps`): `model(batch)` gives the LossOutput, one
    optimizer step every `grad_accum` micro-batches. Updates `progress.epoch` and `.step`; returns this
    worker's metrics (mean losses, tokens, tokens/s, seconds)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
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
        tokens += int(batch.attention_mask.sum())
        if not sync:
            continue
        if _is_fsdp(model):  # the norm over all shards
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


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker: load, wrap, train epoch by epoch, checkpoint and report (module docstring)."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from onegen.collate import OneGenCollator
    from onegen.data import OneGenExample

    config = TrainConfig.from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)

    # [1] Model: the base in float32 (bf16 autocast on GPU), made trainable, restored from a checkpoint.
    onegen = OneGen.from_pretrained(config.base, device="cpu", dtype=torch.float32)
    model = make_trainable(onegen.model, onegen.token_ids, config)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_model_state(model, Path(folder), config)
    elif config.init:  # continue a saved model: its weights, this run's learning-rate schedule
        load_trained_weights(model, Path(config.init), lora=config.lora is not None)
    onegen.model = model  # save_pretrained sees the PEFT model (adapter + token rows)
    sharded = config.strategy == "fsdp" and world > 1
    model = ray.train.torch.prepare_model(  # [3] Ray: move to the worker's device, wrap in DDP / FSDP
        OneGenLoss(model, onegen.token_ids, config.loss, config.temperature, config.retrieval_weight),
        move_to_device=not sharded,  # FSDP moves each shard itself
        parallel_strategy=config.strategy,
        parallel_strategy_kwargs=fsdp_kwargs(model, device) if sharded else None,
    )

    examples = [OneGenExample(**e) for e in ray.get(loop_config["examples"])]
    entities = ray.get(loop_config["entities"])
    collator = OneGenCollator(onegen.tokenizer, onegen.token_ids, entities,
                              num_negatives=config.num_negatives, seed=config.seed)
    loader = _data_loader(examples, collator, config)
    optimizer, scheduler = optimizer_and_scheduler(model, config, len(loader))
    progress = Progress(hardware=_hardware(device, world))
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress = load_train_state(Path(folder), model, optimizer, scheduler)
        LOG.info("resumed at epoch %d, step %d", progress.epoch, progress.step)

    while progress.epoch < config.epochs and (config.max_steps is None or progress.step < config.max_steps):
        epoch_start = time.perf_counter()
        mining = None
        if config.mine_negatives:  # the same on every worker: same model, same examples
            mining, loader = _mine(onegen, examples, entities, collator, config, device)
        if world > 1:
            loader.sampler.set_epoch(progress.epoch)
        else:
            loader.generator.manual_seed(config.seed * 1000 + progress.epoch)  # same order after a resume
        metrics = train_epoch(model, loader, optimizer, scheduler, progress, config, device, log=rank == 0)
        if mining is not None:
            metrics.update(mining)
        metrics["tokens_per_second"] *= world  # every worker trains on as many tokens
        progress.tokens += metrics.pop("tokens") * world
        # [4] Ray: checkpoint (every rank joins; rank 0 writes and evaluates), then report from every rank.
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_checkpoint(folder, model, onegen, optimizer, scheduler, rank)
            if rank == 0 and loop_config.get("eval_docs") is not None:
                metrics.update(_evaluate_checkpoint(folder, loop_config, config, device))
            progress.train_seconds += time.perf_counter() - epoch_start
            metrics["wall_seconds"] = progress.train_seconds
            progress.history.append(metrics)
            if rank == 0:
                write_progress(folder, progress)
            LOG.info("epoch %d: %s", progress.epoch, metrics)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)


def _mine(onegen: OneGen, examples: list, entities: dict, collator, config: TrainConfig, device: torch.device):
    """Mine this epoch's negatives with the model as it stands; returns their metrics and the new loader."""
    from kb.ids import Redirects
    from onegen.mining import mine_with_model

    started = time.perf_counter()
    canonical = Redirects.from_tsv(config.redirects).resolve if config.redirects else str
    onegen.device = device  # prepare_model moved the weights there
    mined, report = mine_with_model(onegen, examples, list(entities.values()), num_negatives=config.num_negatives,
                                    canonical=canonical, batch_size=config.batch_size)
    metrics = {"mined_gold_first": report.gold_first_rate, "mining_seconds": time.perf_counter() - started}
    return metrics, _data_loader(mined, collator, config)  # as many batches: the schedule holds


def _evaluate_checkpoint(folder: Path, loop_config: dict, config: TrainConfig, device: torch.device) -> dict:
    """Score the model just saved in `folder` (loaded back as a user would) on the eval documents."""
    import ray

    onegen = OneGen.from_pretrained(str(folder / CKPT_MODEL), device=device)
    started = time.perf_counter()
    metrics = evaluate(onegen, ray.get(loop_config["eval_docs"]), ray.get(loop_config["eval_entities"]),
                       batch_size=config.eval_batch_size, redirects=config.redirects)
    metrics["eval_seconds"] = time.perf_counter() - started
    return metrics


# --- the driver ---


@dataclass
class TrainResult:
    """What `train` returns."""

    output: Path  # the final model folder
    checkpoint: Path  # the checkpoint its weights come from (best eval F1, else the latest)
    progress: Progress  # counters and per-epoch history of the run
    data: dict  # sizes of the training and eval data


def _check_run_folder(config: TrainConfig) -> None:
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


def prepare_data(config: TrainConfig, tokenizer, token_ids: TokenIds) -> dict:
    """Training examples, KB and eval documents as plain objects, with their sizes under "sizes"."""
    from eval.corpora import load_dataset_file
    from kb.jsonl import read_kb
    from onegen.data import build_examples, read_alias_table

    docs = load_dataset_file(config.train, config.split)
    entities = {e.id: e for e in read_kb(config.kb).entities}
    aliases = read_alias_table(config.aliases) if config.aliases else None
    examples = build_examples(docs, entities, tokenizer, token_ids, max_length=config.max_length,
                              aliases=aliases, num_negatives=config.num_negatives, seed=config.seed)
    if not examples:
        raise ValueError(f"{config.train} (split {config.split}) gave no training examples")
    data = {"examples": [asdict(e) for e in examples], "entities": entities, "eval_docs": None, "eval_entities": None}
    sizes = {"train_docs": len(docs), "train_examples": len(examples),
             "train_tokens": sum(len(e.input_ids) for e in examples),
             "train_mentions": sum(len(e.link_entities) for e in examples), "kb_entities": len(entities)}
    if config.eval:
        eval_docs, eval_entities = eval_subset(load_dataset_file(config.eval, config.eval_split), entities, config)
        data.update(eval_docs=eval_docs, eval_entities=eval_entities)
        sizes.update(eval_docs=len(eval_docs), eval_kb_entities=len(eval_entities))
    data["sizes"] = sizes
    return data


def train(config: TrainConfig) -> TrainResult:
    """Run the Ray Train job on the connected Ray cluster and write the final model to `config.output`."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = replace(config, base=base_reference(config.base))
    _check_run_folder(config)
    started = time.perf_counter()
    tokenizer, token_ids = tokenizer_with_tokens(config.base)
    data = prepare_data(config, tokenizer, token_ids)
    LOG.info("training data: %s", data["sizes"])
    run_folder = config.storage_path / RUN_NAME
    run_folder.mkdir(parents=True, exist_ok=True)
    (run_folder / ARGS_FILE).write_text(json.dumps(asdict(config), indent=1))
    # examples, KB and eval data go through the object store once, not pickled into every worker's config
    refs = {k: None if v is None else ray.put(v) for k, v in data.items() if k != "sizes"}
    loop_config = {"config": asdict(config), **refs}
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
                checkpoint_score_attribute=SCORE if config.eval else None,
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
    if config.eval:
        # the best eval F1; among equals the later epoch
        best = max(result.best_checkpoints, key=lambda pair: (pair[1].get(SCORE, -1.0), pair[1]["epoch"]))[0]
    output = Path(config.output)
    with best.as_directory() as folder:
        shutil.copytree(Path(folder) / CKPT_MODEL, output, dirs_exist_ok=True)
        best_metrics = read_progress(folder).history[-1]
    tokenizer.save_pretrained(output)  # the tokenizer with the OneGen tokens, beside adapter or weights
    (output / ARGS_FILE).write_text(json.dumps(asdict(config), indent=1))
    LinkerConfig().save(output)  # generic decision settings, not the bundled default's: tune with bench/gpu_score.py --write-config
    write_model_card(output / CARD_FILE, config, progress, data["sizes"], best_metrics,
                     driver_seconds=time.perf_counter() - started, init=config.init)
    return TrainResult(output=output, checkpoint=Path(best.path), progress=progress, data=data["sizes"])


# --- the model card ---

_CARD_COLUMNS = [("epoch", "{}"), ("step", "{}"), ("train_loss", "{:.4f}"), ("train_generation", "{:.4f}"),
                 ("train_retrieval", "{:.4f}"), ("tokens_per_second", "{:.0f}"), ("eval_inkb_precision", "{:.4f}"),
                 ("eval_inkb_recall", "{:.4f}"), (SCORE, "{:.4f}"), ("mined_gold_first", "{:.4f}"), ("wall_seconds", "{:.0f}")]


def write_model_card(path: Path, config: TrainConfig, progress: Progress, sizes: dict, best: dict,
                     driver_seconds: float, init: Path | None = None) -> None:
    """A README.md model card: base, data, hyper-parameters, metrics per epoch, wall time, hardware.

    `init` names the saved model that training continued from, when it did not start from the base.
    """
    method = (f"LoRA r={config.lora} alpha={config.lora_alpha or 2 * config.lora} dropout={config.lora_dropout} "
              "on every linear layer, plus the [LK]/[SE]/[_CONTINUE_] embedding rows (PEFT trainable tokens)"
              if config.lora is not None else "full fine-tuning")
    header = "| " + " | ".join(name for name, _ in _CARD_COLUMNS) + " |"
    rule = "|" + "---|" * len(_CARD_COLUMNS)
    rows = ["| " + " | ".join(fmt.format(h[name]) if name in h else "" for name, fmt in _CARD_COLUMNS) + " |"
            for h in progress.history]
    hyper = {k: v for k, v in asdict(config).items() if k not in ("output", "storage", "resume")}
    hyper["lr"] = config.learning_rate
    lines = [
        "# OneGen entity linker", "",
        f"Base model: `{config.base}`. Method: {method}; loss: generation CE + {config.loss.upper()} retrieval "
        "(DESIGN section 2). Load with `OneGen.from_pretrained(this_folder)`.", "",
        *([f"Training continued from `{init}` (its weights, a new learning-rate schedule).", ""] if init else []),
        "## Data", "",
        f"- Training: `{config.train}`" + (f", split `{config.split}`" if config.split else "")
        + f": {sizes['train_docs']} documents, {sizes['train_examples']} examples, {sizes['train_tokens']} tokens, "
        f"{sizes['train_mentions']} linked mentions.",
        f"- KB: `{config.kb}`, {sizes['kb_entities']} entities"
        + (f"; hard negatives from `{config.aliases}`." if config.aliases else "."),
    ]
    if config.eval:
        lines.append(f"- Evaluation each epoch: `{config.eval}`" + (f", split `{config.eval_split}`" if config.eval_split else "")
                     + f", {sizes['eval_docs']} documents, exact cosine top-1 over {sizes['eval_kb_entities']} KB entities "
                     "(closed in-KB universe), A2KB strong match, InKB micro scores (eval/scorer.py).")
    lines += ["", "## Hyper-parameters", "", "```json", json.dumps(hyper, indent=1), "```", "",
              "## Metrics per epoch", "", header, rule, *rows, ""]
    if config.eval:
        lines.append(f"Weights from epoch {best.get('epoch')} (best {SCORE} = {best.get(SCORE, float('nan')):.4f}).")
    else:
        lines.append(f"Weights from the last epoch ({best.get('epoch')}).")
    lines += ["", "## Run", "",
              f"- Wall time in training (all runs, evaluation and checkpoints included): {progress.train_seconds:.0f} s; "
              f"this driver run: {driver_seconds:.0f} s.",
              f"- Steps: {progress.step}; tokens trained on (mention and entity rows, unpadded): {progress.tokens}.",
              f"- Hardware: {json.dumps(progress.hardware)}.", ""]
    path.write_text("\n".join(lines))
