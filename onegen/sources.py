"""Where a model's files are, found without loading it (and without importing torch): the base model
folder and the PEFT adapter folder that `OneGen.from_pretrained` reads for a model name."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from onegen.default_model import DEFAULT_ADAPTER_DIR, DEFAULT_MODEL_NAME, default_model_dir, default_model_path

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "org/name" or "name"
EXPECTED = (
    "expected one of: None or 'SmolLM2-135M-Instruct' (the embedded default); a folder written by "
    "save_pretrained (config.json, *.safetensors, tokenizer files); a PEFT adapter folder "
    "(adapter_config.json naming its base); or a Hugging Face hub id (downloaded unless HF_HUB_OFFLINE is set)"
)


@dataclass(frozen=True)
class ModelSource:
    """A model as `OneGen.from_pretrained` loads it: a base, and a PEFT adapter over it or not."""

    base: str  # DEFAULT_MODEL_NAME (the embedded default), a model folder or a cached hub id
    adapter: Path | None  # PEFT adapter folder, None for the base alone

    def base_folder(self, materialise: bool = True) -> Path:
        """Local folder of the base; the embedded default is materialised and a hub id downloaded on first
        use unless `materialise` is False (then the folder may not exist yet)."""
        if self.base != DEFAULT_MODEL_NAME:
            return model_folder(self.base, download=materialise)
        return default_model_dir() if materialise else default_model_path()


def resolve(name_or_path: str | None = None, adapter: str | None = None) -> ModelSource:
    """The base and adapter that `name_or_path` (and `adapter`) name; see `OneGen.from_pretrained`."""
    if name_or_path is None and adapter is None:
        adapter = str(DEFAULT_ADAPTER_DIR)
    if name_or_path is not None and adapter is None:
        folder = Path(name_or_path).expanduser()
        if (folder / "adapter_config.json").is_file():
            adapter, name_or_path = str(folder), None
    adapter_dir = None
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        config_file = adapter_dir / "adapter_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter folder: expected {config_file}.")
        if name_or_path is None:
            name_or_path = json.loads(config_file.read_text()).get("base_model_name_or_path")
    base = DEFAULT_MODEL_NAME if name_or_path in (None, DEFAULT_MODEL_NAME) else name_or_path
    return ModelSource(base, adapter_dir)


def local_folder(name: str) -> Path | None:
    """The folder that `name` is, or None for a hub id; a path that is no folder is refused (nothing loaded)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(name) or name.startswith("."):
        raise FileNotFoundError(f"No model folder at {name!r}: {EXPECTED}.")
    return None


def check_model(name_or_path: str | None) -> None:
    """Refuse a model named by a path that holds no model folder or adapter, or, while downloads are off
    (HF_HUB_OFFLINE), by a hub id not in the local cache (a mistyped relative path such as `out/model`),
    before anything loads it."""
    source = resolve(name_or_path)
    if source.base != DEFAULT_MODEL_NAME and local_folder(source.base) is None:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            model_folder(source.base, download=False)


def model_folder(name: str, download: bool = True) -> Path:
    """Local folder of a model given as a folder path or a Hugging Face hub id: its snapshot in the local cache,
    downloaded when missing unless `download` is False or HF_HUB_OFFLINE is set."""
    folder = local_folder(name)
    if folder is not None:
        return folder
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(name, local_files_only=not download))
    except LocalEntryNotFoundError as err:  # not cached, and offline (HF_HUB_OFFLINE) or no download asked
        raise FileNotFoundError(
            f"{name!r} is neither a local folder nor a hub id in the local Hugging Face cache "
            f"(downloads are off{': HF_HUB_OFFLINE is set' if huggingface_hub.constants.HF_HUB_OFFLINE else ''}): "
            f"{EXPECTED}."
        ) from err
    except (HfHubHTTPError, OSError) as err:  # no such repository, no access, no network
        raise FileNotFoundError(f"{name!r} could not be downloaded from the Hugging Face hub ({err}): {EXPECTED}.") from err


def source_files(name_or_path: str | None = None) -> list[Path] | None:
    """Every file of the base folder and the adapter folder of a model, sorted; None when they are not
    all on this machine (a default not materialised yet, an uncached hub id, a missing folder)."""
    try:
        source = resolve(name_or_path)
        folders = [source.base_folder(materialise=False)] + ([source.adapter] if source.adapter else [])
    except FileNotFoundError:
        return None
    if not (folders[0] / "config.json").is_file():
        return None
    return sorted(path for folder in folders for path in folder.iterdir() if path.is_file())
