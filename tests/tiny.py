"""Tiny random-weight causal LMs for unit tests, built from a config (no hub, no weights on disk).

They use the default model's real tokenizer (it has a chat template), so prompts tokenise as
they do in production; only the network is small.
"""
from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers import Qwen2Config, Qwen2ForCausalLM

from onegen.spans import Document, Mention
from onegen.default_model import default_model_dir

_ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_tokenizer():
    """The default model's tokenizer (49,152 tokens, chat template)."""
    return AutoTokenizer.from_pretrained(default_model_dir())


def tiny_model(vocab_size: int, arch: str = "llama", tie: bool = True, seed: int = 0, layers: int = 2):
    """A random causal LM with hidden size 32, float32, in eval mode."""
    config_cls, model_cls = _ARCHS[arch]
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def annotated_document(doc_id: str, text: str, spans) -> Document:
    """A gold document from (surface, entity id or None) pairs, each found left to right in `text`."""
    annotations, pos = [], 0
    for surface, entity in spans:
        start = text.index(surface, pos)
        annotations.append(Mention(start, start + len(surface), surface, entity))
        pos = start + len(surface)
    return Document(doc_id, text, annotations)


def identify_in_process(model: str) -> tuple[dict, int]:
    """What onegen.index_build's Ray task returns for a model folder (fingerprint, hidden size), computed here."""
    from onegen.model import OneGen

    onegen = OneGen.from_pretrained(model, device="cpu")
    return onegen.fingerprint(), onegen.hidden_size
