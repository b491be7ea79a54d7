"""`manifest.json` of an entity index: what was indexed, with which model, in which files.

The manifest is written last (atomically) by a build or an update, so a folder with a manifest
names a complete index; every file it lists carries a sha256 that loading checks.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kb.files import atomic_output

FORMAT_VERSION = 1  # bump when the layout changes; older indexes are then refused with the rebuild command
MANIFEST_NAME = "manifest.json"
INDEX_KINDS = ("flat", "ivf", "hnsw")
DTYPES = ("float32", "float16")


class IndexLoadError(ValueError):
    """Base of the refusals to load an index: the message says how to rebuild it."""


class IndexMismatchError(IndexLoadError):
    """The index was built with another model, or for another dimension, than the one in use."""


class IndexCorruptError(IndexLoadError):
    """A file of the index is missing or its checksum or shape is wrong."""


@dataclass
class IndexSpec:
    """FAISS index type and parameters (one index per shard, inner product on unit vectors)."""

    kind: str = "flat"  # "flat" (exact), "ivf" (inverted lists) or "hnsw" (graph)
    nlist: int | None = None  # IVF: lists per shard; None picks about 4*sqrt(shard size)
    nprobe: int = 32  # IVF: lists visited per query
    hnsw_m: int = 32  # HNSW: neighbours per node
    ef_construction: int = 80  # HNSW: candidate list size while building
    ef_search: int = 128  # HNSW: candidate list size while searching

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")


@dataclass
class ShardInfo:
    """One shard: its entities' ids, vectors and (IVF/HNSW) FAISS index."""

    name: str  # e.g. "shard-00000"
    count: int  # entities in the shard
    files: dict[str, str]  # file name inside the index folder -> sha256


@dataclass
class Manifest:
    """Everything needed to check that an index fits a model and is intact."""

    model: dict  # fingerprint of the encoder (model id, weights sha256, tokenizer sha256)
    input_dim: int  # encoder hidden size (dimension of the query vectors)
    dim: int  # indexed dimension (input_dim, or the PCA output dimension)
    dtype: str  # stored vector dtype: "float32" or "float16"
    index: IndexSpec  # FAISS index type and parameters
    entity_count: int  # entities over all shards
    shards: list[ShardInfo]  # shard files in order
    kb: dict  # {"path": ..., "sha256": ..., "updates": [{"path", "sha256", "added", "replaced", "at"}]}
    built_at: str  # ISO-8601 UTC time of the build
    build_seconds: float  # wall time of the build (encoding included)
    pca: dict | None = None  # {"file": ..., "sha256": ...} of the stored PCA transform, or None
    metric: str = "cosine"  # vectors are L2-normalised; inner product == cosine
    revision: int = 0  # bumped by every --update
    updated_at: str | None = None  # ISO-8601 UTC time of the last update
    version: int = FORMAT_VERSION  # layout version

    def save(self, directory: str | Path) -> Path:
        """Write `manifest.json` atomically into `directory`."""
        path = Path(directory) / MANIFEST_NAME
        with atomic_output(path) as f:
            json.dump(asdict(self), f, indent=2, ensure_ascii=False)
            f.write("\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """Read `manifest.json` of an index folder; refuse a missing one or another layout version."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {MANIFEST_NAME} in {directory}: not a built entity index (or its build did not finish). "
                f"Build it with: {build_command(None, directory, None)} (add --resume to continue an interrupted build)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            version = data.get("version")
        except (ValueError, AttributeError) as err:  # not UTF-8, not JSON, not an object
            raise IndexCorruptError(f"{path} is not an index manifest ({err}). "
                                    f"Rebuild the index with: {build_command(None, directory, None)}") from None
        if version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"{path} has layout version {version!r}, this code reads version {FORMAT_VERSION}. "
                f"Rebuild it with: {build_command(data.get('kb', {}).get('path'), directory, data.get('model', {}).get('model'))}"
            )
        try:
            data["index"] = IndexSpec(**data["index"])
            data["shards"] = [ShardInfo(**s) for s in data["shards"]]
            return cls(**data)
        except (KeyError, TypeError, ValueError) as err:  # a field missing, unknown or of the wrong type
            raise IndexCorruptError(f"{path} is not a complete index manifest ({type(err).__name__}: {err}). "
                                    f"Rebuild the index with: {build_command(None, directory, None)}") from None

    def rebuild_command(self, directory: str | Path, model: str | None = None) -> str:
        """The command that rebuilds this index (for `model`, else the one it was built with)."""
        return build_command(self.kb.get("path"), directory, model or self.model.get("model"))


def build_command(kb: str | None, out: str | Path, model: str | None) -> str:
    """`python jobs/build_index.py ...` for a KB, an output folder and a model (None: the default)."""
    command = f"python jobs/build_index.py --kb {kb or 'KB.jsonl'} --out {out}"
    return command + (f" --model {model}" if model else "")


def fingerprints_match(built: dict, current: dict) -> bool:
    """True when two encoder fingerprints name the same weights and tokenizer.

    Hash fields (keys ending in "sha256") decide when both sides have them, so the same weights
    under another path still match; otherwise the whole fingerprints must be equal.
    """
    hashes = sorted(k for k in built.keys() & current.keys() if k.endswith("sha256"))
    if hashes:
        return all(built[k] == current[k] for k in hashes)
    return built == current
