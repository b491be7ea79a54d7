"""The OneGen model: a Hugging Face causal LM with the three OneGen tokens, its loaders and the entity embedder.

Embeddings (DESIGN section 2) are the last layer's hidden state after the final norm, at the retrieval
token itself, L2-normalised float32. `fingerprint()` returns
`{"model": name, "weights_sha256": hex, "tokenizer_sha256": hex}`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from kb.entity import Entity
from onegen.default_model import DEFAULT_MODEL_NAME, default_model_path
from onegen.kv_cache import PrefixCache, param_versions
from onegen.prompts import ENTITY_PREFIX, entity_input_ids
from onegen.sources import EXPECTED, resolve
from onegen.tokens import CONTINUE, ENTITY, LINK, SPECIAL_TOKENS, TOKEN_DESCRIPTIONS

if TYPE_CHECKING:
    from onegen.spans import Annotated

LOG = logging.getLogger(__name__)

TOKEN_ROWS_FILE = "onegen_token_rows.safetensors"  # new-token rows saved beside a PEFT adapter
ENTITY_MAX_TOKENS = 256  # entity sequences longer than this keep their head and the final [SE]
PROGRESS_MIN_ENTITIES = 1024  # show a progress bar from this many entities on


@dataclass
class TokenIds:
    """Vocabulary ids of the OneGen tokens in one tokenizer."""

    link: int  # [LK]: query-side retrieval token, after each mention
    entity: int  # [SE]: document-side retrieval token, ends each entity sequence
    cont: int  # [_CONTINUE_]: forced right after every [LK]


def _token_ids(tokenizer) -> dict[str, int | None]:
    """Ids the tokenizer already has for each OneGen token (None when missing)."""
    vocab = tokenizer.get_vocab()
    return {token: vocab.get(token) for token in SPECIAL_TOKENS}


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain layer under PEFT wrappers (LoRA layers, modules_to_save, trainable tokens)."""
    while True:
        if hasattr(module, "base_layer"):
            module = module.base_layer
        elif getattr(module, "original_module", None) is not None:
            module = module.original_module
        else:
            return module


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings, layers, final norm; no LM head) of `model`, PEFT unwrapped."""
    return _base_model(model).get_decoder()


def token_rows(model: nn.Module) -> tuple[nn.Embedding, nn.Module | None]:
    """The plain input embedding and, when untied, the plain output head of `model` (PEFT unwrapped)."""
    base = _base_model(model)
    embed = _unwrap(base.get_input_embeddings())
    head = base.get_output_embeddings()
    head = None if head is None else _unwrap(head)
    if head is not None and head.weight is embed.weight:
        head = None
    return embed, head


def add_onegen_tokens(model: nn.Module, tokenizer) -> TokenIds:
    """Add [LK], [SE], [_CONTINUE_] to `tokenizer` and `model` unless present; return their ids.

    Tokens the tokenizer already has keep their ids (a released OneGen checkpoint: [SE]=32000,
    [LK]=32001, [_CONTINUE_]=32002). Rows of newly added tokens, and of ids beyond the embedding
    matrix, start as the mean embedding of the token's description (input embeddings, and the
    output head when it is not tied). Calling it again changes nothing.
    """
    before = _token_ids(tokenizer)
    missing = [token for token in SPECIAL_TOKENS if before[token] is None]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)  # in SPECIAL_TOKENS order: released ids
    ids = _token_ids(tokenizer)
    embed, _ = token_rows(model)
    rows = embed.weight.shape[0]
    needed = max(ids.values()) + 1
    if needed > rows:
        _base_model(model).resize_token_embeddings(needed, mean_resizing=False)
    to_init = [token for token in SPECIAL_TOKENS if token in missing or ids[token] >= rows]
    if to_init:
        _init_rows(model, tokenizer, {token: ids[token] for token in to_init})
    return TokenIds(link=ids[LINK], entity=ids[ENTITY], cont=ids[CONTINUE])


@torch.no_grad()
def _init_rows(model: nn.Module, tokenizer, token_to_id: dict[str, int]) -> None:
    """Set each new token's rows to the mean of its description tokens' rows (input, and untied output)."""
    embed, head = token_rows(model)
    for token, row in token_to_id.items():
        desc = tokenizer(TOKEN_DESCRIPTIONS[token], add_special_tokens=False).input_ids
        for layer in (embed, head):
            if layer is None:
                continue
            weight = layer.weight  # (V, D)
            weight[row] = weight[desc].float().mean(0).to(weight.dtype)


def last_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache=None) -> torch.Tensor:
    """Last-layer hidden states after the final norm, (B, T, D), for a padded batch.

    Args:
        model: a causal LM (or a PEFT model over one); only its decoder runs, not the LM head.
        input_ids: (B, T) token ids, left or right padded.
        attention_mask: (B, P + T), 1 on real tokens; P = tokens already in `cache` (all real).
        cache: optional transformers Cache holding P earlier positions; it is extended in place.
    Positions count real tokens only, so padding on either side gives the same states.
    """
    decoder = decoder_of(model)
    T = input_ids.shape[1]
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=cache is not None,
    )
    return out.last_hidden_state  # (B, T, D)


def packed_last_hidden(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states after the final norm, (R, T, D), for rows that pack several sequences.

    Args:
        model: a causal LM (or a PEFT model over one); only its decoder runs.
        input_ids: (R, T) token ids; each row is one or more sequences back to back, then right padding.
        position_ids: (R, T) positions restarting at 0 where each sequence starts; padding continues the
            positions of the row's last sequence (it comes after every real token, so nothing attends to it).
    With no 2D mask, transformers reads the restarts as packed sequences and gives each its own causal
    attention: every sequence gets the states it would get alone.
    """
    decoder = decoder_of(model)
    out = decoder(input_ids=input_ids, attention_mask=None, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state  # (R, T, D)


def pad_batch(seqs: Sequence[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one (B, T) batch on `side` ("left" | "right"); returns ids and mask."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, seq in enumerate(seqs):
        span = slice(T - len(seq), T) if side == "left" else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _pick_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _split_over_gpus(model: nn.Module) -> nn.Module:
    """The model dispatched over all visible GPUs, layers balanced by memory (accelerate); outputs come
    back on the first GPU."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    whole_layers = getattr(model, "_no_split_modules", None) or []  # decoder layers stay on one GPU each
    memory = get_balanced_memory(model, no_split_module_classes=whole_layers)
    memory.pop("cpu", None)  # GPUs only: never offload to the CPU
    device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=whole_layers)
    return dispatch_model(model, device_map=device_map)


def _is_split(model: nn.Module) -> bool:
    """Whether accelerate dispatched the model over more than one device."""
    return len({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}) > 1


def _pick_dtype(dtype, device: torch.device) -> torch.dtype:
    """bf16 on GPU (fp16 where bf16 is unsupported), fp32 on CPU, unless `dtype` is given."""
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _check_model_folder(folder: Path) -> list[Path]:
    """The safetensors weight files of a model folder; clear errors when it is not one."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json (found: {sorted(p.name for p in folder.iterdir())}): {EXPECTED}.")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(
            f"{folder} has no *.safetensors weights; only safetensors are loaded (never pickles). "
            "Convert the checkpoint with transformers' save_pretrained (safetensors is its default)."
        )
    return weights


def _sha256_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _sha256_state_dict(model: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every state-dict tensor, in sorted name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class OneGen:
    """One causal LM that marks entity mentions and embeds them ([LK]) and entities ([SE]).

    `OneGen(model, tokenizer)` wraps an in-memory model (tokens are added if missing);
    `OneGen.from_pretrained(...)` loads one. The model is put in eval mode on `device`.
    """

    def __init__(self, model: nn.Module, tokenizer, device=None):
        self.tokenizer = tokenizer
        self.token_ids: TokenIds = add_onegen_tokens(model, tokenizer)
        if _is_split(model):  # layers on several GPUs (accelerate): inputs go where the embeddings are
            self.device = model.get_input_embeddings().weight.device
            self.model = model.eval()
        else:
            self.device = _pick_device(device)
            self.model = model.to(self.device).eval()
        self.dtype: torch.dtype = next(model.parameters()).dtype
        self.name_or_path: str = self._name_of(_base_model(model))
        self.adapter: str | None = None  # PEFT adapter folder this model was loaded with
        self._weight_files: list[Path] = []  # safetensors it was loaded from (fingerprint source)
        self._loaded_versions: tuple = ()  # parameter versions right after loading
        self._prefix_ids: list[int] | None = None  # token ids of the entity prefix to cache
        self._prefix_kv: tuple | None = None  # (prefix ids, parameter versions, its KV cache (1 row))
        self.mention_prefix = PrefixCache()  # the mention prompts' instruction, kept across decoding calls

    @staticmethod
    def _name_of(model: nn.Module) -> str:
        name = str(getattr(model.config, "_name_or_path", "") or model.__class__.__name__)
        return DEFAULT_MODEL_NAME if Path(name).expanduser().resolve() == default_model_path().resolve() else name

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        adapter: str | None = None,
        device=None,
        dtype=None,
        trust_remote_code: bool = False,
        split_over_gpus: bool = False,
    ) -> OneGen:
        """Load a model: None (the trained default: the embedded base with the bundled OneGen adapter),
        "SmolLM2-135M-Instruct" (the embedded base alone, untrained for OneGen), a model folder or cached
        hub id (Llama, Qwen2, Mistral, ...), or a PEFT adapter folder (given as `name_or_path` or as
        `adapter` over the base `name_or_path`; with `name_or_path=None` the adapter's own base is used).
        Safetensors only. Device: CUDA when available; dtype: bf16/fp16 on GPU, fp32 on CPU.
        `split_over_gpus`: the layers are spread over all visible GPUs (a model too big for one GPU);
        the model is loaded, given its tokens and adapter on the CPU first, then dispatched."""
        source = resolve(name_or_path, adapter)
        base, adapter_dir = source.base, source.adapter
        folder = source.base_folder()
        weights = _check_model_folder(folder)
        device = _pick_device(device)
        dtype = _pick_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
        token_ids = add_onegen_tokens(model, tokenizer)
        if adapter_dir is not None:
            model = _apply_adapter(model, adapter_dir, token_ids)
            weights = weights + sorted(adapter_dir.glob("*.safetensors"))
        if split_over_gpus and torch.cuda.device_count() > 1:
            model = _split_over_gpus(model)
        onegen = cls(model, tokenizer, device=device)
        onegen.name_or_path = base
        onegen.adapter = None if adapter_dir is None else str(adapter_dir)
        onegen._weight_files = weights
        onegen._loaded_versions = param_versions(onegen.model)
        return onegen

    def save_pretrained(self, directory) -> None:
        """Write what `from_pretrained(directory)` reads: a full model folder, or for a PEFT model the
        adapter (its base recorded as `name_or_path`) plus the new-token rows of the base."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not hasattr(self.model, "peft_config"):
            self.model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
            return
        for config in self.model.peft_config.values():
            config.base_model_name_or_path = self.name_or_path
        # Our own row file replaces PEFT's whole-matrix copy of the embeddings.
        self.model.save_pretrained(directory, save_embedding_layers=False)
        embed, head = token_rows(self.model)
        ids = [self.token_ids.link, self.token_ids.entity, self.token_ids.cont]
        rows = {"input": embed.weight[ids].detach().contiguous().cpu()}  # (3, D)
        if head is not None:
            rows["output"] = head.weight[ids].detach().contiguous().cpu()  # (3, D)
        save_file(rows, directory / TOKEN_ROWS_FILE, metadata={"token_ids": json.dumps(asdict(self.token_ids))})

    @property
    def hidden_size(self) -> int:
        return token_rows(self.model)[0].weight.shape[1]

    def fingerprint(self) -> dict:
        """Identity of model and tokenizer for index manifests: {"model", "weights_sha256", "tokenizer_sha256"}.

        Weights hash the safetensors files the model was loaded from (same hash on any device and
        dtype) while no parameter has changed since loading; otherwise the in-memory state dict.
        """
        if self._weight_files and param_versions(self.model) == self._loaded_versions:
            weights = _sha256_files(self._weight_files)
        else:
            weights = _sha256_state_dict(self.model)
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        added = sorted((i, t.content, t.special) for i, t in self.tokenizer.added_tokens_decoder.items())
        tokenizer = hashlib.sha256(json.dumps([vocab, added], ensure_ascii=False).encode()).hexdigest()
        model = self.name_or_path if self.adapter is None else f"{self.name_or_path}+{self.adapter}"
        return {"model": model, "weights_sha256": weights, "tokenizer_sha256": tokenizer}

    def __call__(self, texts: list[str], batch_size: int = 8, **kw) -> list[Annotated]:
        """Mark and embed the mentions of `texts` in one decoding pass (onegen.inference.annotate)."""
        from onegen.inference import annotate

        return annotate(self, texts, batch_size=batch_size, **kw)

    # --- entity embeddings ---

    def entity_prefix_ids(self) -> list[int]:
        """Token ids shared by the start of every entity sequence: ENTITY_PREFIX up to its last newline.

        Cut at a newline so no token merges across the cut; `embed_entities` still checks each
        sequence starts with these ids and embeds any that does not without the cache."""
        if self._prefix_ids is None:
            cut = ENTITY_PREFIX.rindex("\n") + 1
            self._prefix_ids = self.tokenizer(ENTITY_PREFIX[:cut]).input_ids
        return self._prefix_ids

    def embed_entities(
        self, entities: Sequence[Entity], batch_size: int = 32, *, reuse_prefix: bool = True
    ) -> np.ndarray:
        """(N, D) float32 L2-normalised [SE] embeddings of `entities`, in input order.

        The shared prefix is forwarded once and its KV cache reused for every batch
        (`reuse_prefix=False` forwards whole sequences); batches group similar lengths."""
        seqs = [entity_input_ids(self.tokenizer, e.title, e.description, max_length=ENTITY_MAX_TOKENS) for e in entities]
        prefix = self.entity_prefix_ids() if reuse_prefix else []
        P = len(prefix)
        cached = [i for i, s in enumerate(seqs) if P and len(s) > P and s[:P] == prefix]
        plain = sorted(set(range(len(seqs))) - set(cached))
        out = np.zeros((len(seqs), self.hidden_size), dtype=np.float32)
        bar = tqdm(total=len(seqs), desc="embed entities", unit="ent", disable=len(seqs) < PROGRESS_MIN_ENTITIES)
        for group, prefix_ids in ((cached, prefix), (plain, [])):
            order = sorted(group, key=lambda i: len(seqs[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self.embed_sequences([seqs[i][len(prefix_ids):] for i in rows], prefix=prefix_ids)
                bar.update(len(rows))
        bar.close()
        return out

    @torch.inference_mode()
    def embed_sequences(
        self, sequences: Sequence[list[int]], *, prefix: list[int] | None = None, padding_side: str = "right"
    ) -> np.ndarray:
        """(B, D) float32 L2-normalised hidden states at the last [SE] of each `prefix + sequence`, one batch.

        `prefix` (shared by all rows) is forwarded once per call, or reused from a cache for the
        entity prefix; padding on either side gives the same vectors."""
        ids, mask = pad_batch(sequences, self._pad_id(), padding_side)  # (B, T), (B, T)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = None
        if prefix:
            cache = self._prefix_cache(prefix, len(sequences))
            mask = torch.cat([mask.new_ones(len(sequences), len(prefix)), mask], dim=1)  # (B, P + T)
        hidden = last_hidden(self.model, ids, mask, cache=cache)  # (B, T, D)
        is_se = (ids == self.token_ids.entity) & mask[:, -ids.shape[1]:].bool()  # (B, T)
        if not bool(is_se.any(-1).all()):
            raise ValueError(f"every sequence must contain the entity token {ENTITY} (id {self.token_ids.entity})")
        positions = torch.arange(ids.shape[1], device=ids.device)
        last = (positions * is_se).argmax(-1)  # (B,) index of the last [SE]
        vectors = hidden[torch.arange(len(sequences), device=ids.device), last].float()  # (B, D)
        return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy()

    @torch.inference_mode()
    def _prefix_cache(self, prefix: list[int], batch: int):
        """A KV cache of `prefix` repeated over `batch` rows; the prefix is forwarded again only when
        it or the weights changed."""
        key = (tuple(prefix), param_versions(self.model))
        if self._prefix_kv is None or self._prefix_kv[:2] != key:
            cache = DynamicCache(config=_base_model(self.model).config)
            ids = torch.tensor([prefix], device=self.device)  # (1, P)
            last_hidden(self.model, ids, torch.ones_like(ids), cache=cache)
            self._prefix_kv = (*key, cache)
        cache = copy.deepcopy(self._prefix_kv[2])
        cache.batch_repeat_interleave(batch)  # per layer (1, H, P, d) -> (B, H, P, d)
        return cache

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return candidate
        return 0


def _apply_adapter(model: nn.Module, adapter_dir: Path, token_ids: TokenIds) -> nn.Module:
    """Restore the saved new-token rows of the base, then apply the PEFT adapter, merged into the weights.

    Merged, a forward costs what the base's costs; unmerged, every forward also runs the LoRA products
    and rebuilds the embedding matrix for the trainable token rows (a third of the CPU decoding time
    of the default model). Training starts from a base model, never from this one."""
    from peft import PeftModel

    rows_file = adapter_dir / TOKEN_ROWS_FILE
    if rows_file.is_file():
        from safetensors import safe_open

        with safe_open(rows_file, framework="pt") as f:
            saved_ids = json.loads(f.metadata()["token_ids"])
        if saved_ids != asdict(token_ids):
            raise ValueError(
                f"{rows_file} holds rows for token ids {saved_ids}, but the base tokenizer gives {asdict(token_ids)}: "
                "the adapter was trained over another tokenizer; load it over its own base."
            )
        rows = load_file(rows_file)
        embed, head = token_rows(model)
        ids = [token_ids.link, token_ids.entity, token_ids.cont]
        with torch.no_grad():
            embed.weight[ids] = rows["input"].to(embed.weight)
            if head is not None and "output" in rows:
                head.weight[ids] = rows["output"].to(head.weight)
    else:
        LOG.warning("%s has no %s: the new tokens keep their initial rows", adapter_dir, TOKEN_ROWS_FILE)
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False).merge_and_unload()
