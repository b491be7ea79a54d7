"""The model made trainable: LoRA (or every weight) plus the OneGen token rows, the loss as one module, FSDP's wrap."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from onegen.default_model import DEFAULT_MODEL_NAME, default_model_dir
from onegen.model import TokenIds, add_onegen_tokens, token_rows
from onegen.training.config import TrainConfig


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


def is_fsdp(model: nn.Module) -> bool:
    """Whether `model` is wrapped in FullyShardedDataParallel."""
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

