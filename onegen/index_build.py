"""Encoding a KB with the model into an entity index, with Ray Data (DESIGN sections 3 and 8).

    KB JSONL --validate--> staged Parquet (kb.build)
      --Ray Data map_batches(EntityEncoder, ActorPoolStrategy)--> [SE] vectors
      --driver--> chunk files (kb.build) --> shards + popularity + manifest.json (kb.index)

An interrupted build continues with `resume=True`, re-encoding only the rows no chunk holds yet.
`update_index` runs the same encoding over a delta KB (in `OUT/.update/`) and hands the vectors
to `EntityIndex.update`, which touches only the affected shards.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from kb.build import BUILD_DIR, CHUNK_DIR, STAGED_KB, UPDATE_DIR, assemble, encoded_rows, prepare_work_dir, write_chunk
from kb.entity import Entity
from kb.files import atomic_output
from kb.index import EntityIndex, read_checked_manifest
from kb.manifest import MANIFEST_NAME, IndexSpec
from onegen.default_model import cache_root
from onegen.sources import source_files

LOG = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """Options of `python jobs/build_index.py` (see its --help)."""

    kb: Path  # KB JSONL to index (or, with update=True, the delta KB)
    out: Path  # index folder
    model: str | None = None  # model folder or name; None: the embedded default
    shards: int = 1  # index shards (contiguous row ranges)
    batch_size: int = 32  # entities per forward pass inside a replica
    chunk_rows: int = 1024  # entities per Ray Data batch, i.e. per resumable chunk file
    dtype: str = "float32"  # stored vector dtype: float32 or float16
    index: IndexSpec = field(default_factory=IndexSpec)  # FAISS index type and parameters
    pca: int | None = None  # PCA output dimension, None: no PCA
    resume: bool = False  # continue an interrupted build in OUT
    num_replicas: int = 1  # model replicas in the Ray actor pool (one GPU each when there are GPUs)


class EntityEncoder:
    """Ray Data callable: one OneGen replica; a batch of KB rows -> their [SE] vectors."""

    def __init__(self, model: str | None, batch_size: int, threads: int):
        import torch

        from onegen.model import OneGen

        torch.set_num_threads(threads)
        self.onegen = OneGen.from_pretrained(model)  # loaded once per actor
        self.batch_size = batch_size  # entities per forward pass

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entities = [Entity(id=i, title=t, description=d) for i, t, d in zip(batch["id"], batch["title"], batch["description"])]
        vectors = self.onegen.embed_entities(entities, batch_size=self.batch_size)  # (B, D) float32 unit rows
        return {"row": batch["row"], "vector": vectors}


def model_identity(model: str | None) -> tuple[dict, int]:
    """(fingerprint, hidden size) of a model, computed in a Ray task so the driver never holds it, and
    cached by the model's files (path, size, mtime): a job that starts again skips loading the model."""
    cache = _identity_cache_file(model)
    if cache is not None and cache.is_file():
        try:
            fingerprint, dim = json.loads(cache.read_text())
            return fingerprint, dim
        except (OSError, ValueError) as err:
            LOG.warning("ignoring the unreadable model identity cache %s: %s", cache, err)
    fingerprint, dim = _identify_in_ray(model)
    if cache is not None:
        try:
            with atomic_output(cache) as f:
                f.write(json.dumps([fingerprint, dim]))
        except OSError as err:  # a read-only cache only costs the next run this load again
            LOG.warning("could not cache the model identity in %s: %s", cache, err)
    return fingerprint, dim


def _identity_cache_file(model: str | None) -> Path | None:
    """Cache file of the model's identity, keyed by its files; None when they are not on this machine."""
    files = source_files(model)
    if files is None:
        return None
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    versions = [importlib.metadata.version(package) for package in ("transformers", "tokenizers")]  # the vocab hash's readers
    key = hashlib.sha256(json.dumps([model, stats, versions]).encode()).hexdigest()[:24]
    return cache_root() / "identities" / f"{key}.json"


def _identify_in_ray(model: str | None) -> tuple[dict, int]:
    @ray.remote(num_cpus=1)
    def identify(name: str | None) -> tuple[dict, int]:
        from onegen.model import OneGen

        onegen = OneGen.from_pretrained(name, device="cpu", dtype="bfloat16")  # half the memory; hashes are of the files
        return onegen.fingerprint(), onegen.hidden_size

    return ray.get(identify.remote(model))


def _drop_rows(batch: dict[str, np.ndarray], done: np.ndarray) -> dict[str, np.ndarray]:
    keep = ~done[batch["row"]]
    return {name: column[keep] for name, column in batch.items()}


def replica_cpus(resources: dict, replicas: int) -> tuple[float, int]:
    """(CPUs Ray reserves, torch threads) for each of `replicas` encoder replicas on a cluster.

    Beside a GPU a replica runs one thread. On a CPU-only cluster the threads share out the CPUs, but
    the replicas reserve all CPUs but one: the tasks that read and split the KB need one, and a pool
    holding every CPU left them none, so the build never started."""
    if resources.get("GPU", 0):
        return 1, 1
    total = resources.get("CPU", 1)
    return max(total - 1, 0) / replicas, max(1, round(total / replicas))


def encode_kb(work: Path, config: BuildConfig, total: int) -> None:
    """Encode every staged KB row no chunk holds yet, with a Ray Data actor pool of model replicas."""
    chunk_dir = work / CHUNK_DIR
    done = encoded_rows(chunk_dir, total)
    pending = total - int(done.sum())
    if not pending:
        return
    if not ray.is_initialized():
        ray.init(logging_level=logging.getLogger().getEffectiveLevel())  # the cluster in RAY_ADDRESS, else a local one, as jobs/build_index.py does
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    cpus, threads = replica_cpus(resources, config.num_replicas)
    # one block per chunk: replicas work in parallel and each chunk file is written as soon as it is encoded
    ds = (ray.data.read_parquet(str(work / STAGED_KB)).select_columns(["row", "id", "title", "description"])
          .repartition(target_num_rows_per_block=config.chunk_rows))
    if done.any():
        ds = ds.map_batches(_drop_rows, fn_kwargs={"done": done}, batch_format="numpy")
    ds = ds.map_batches(
        EntityEncoder,
        fn_constructor_kwargs={"model": config.model, "batch_size": config.batch_size, "threads": threads},
        batch_size=config.chunk_rows,  # entities per replica call
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.num_replicas),  # model replicas, loaded once each
        num_gpus=1 if gpus else 0,  # a whole GPU per replica when the cluster has GPUs
        num_cpus=cpus,
    )
    with tqdm(total=total, initial=total - pending, unit="ent", desc="encode entities") as bar:
        for batch in ds.iter_batches(batch_size=config.chunk_rows, batch_format="numpy"):  # one chunk file each
            write_chunk(chunk_dir, batch["row"], np.asarray(batch["vector"], dtype=np.float32))
            bar.update(len(batch["row"]))


def build_index(config: BuildConfig) -> EntityIndex:
    """Encode a KB with the model and write a new index to `config.out` (a local Ray starts if none runs)."""
    started = time.perf_counter()
    out = Path(config.out)
    if (out / MANIFEST_NAME).is_file():
        raise FileExistsError(
            f"{out} already holds a complete index. Add entities with --update KB_DELTA, "
            "or choose another --out (or delete it) to build afresh."
        )
    fingerprint, dim = model_identity(config.model)
    work = out / BUILD_DIR
    state = prepare_work_dir(work, Path(config.kb), fingerprint, config.resume)
    encode_kb(work, config, state["rows"])
    ids, popularity, aliases, vectors = assemble(work, state["rows"], dim)
    index = EntityIndex.build(
        out,
        ids,
        vectors,
        popularity=popularity,
        aliases=aliases,
        fingerprint=fingerprint,
        num_shards=config.shards,
        dtype=config.dtype,
        spec=config.index,
        pca_dim=config.pca,
        kb={"path": str(Path(config.kb).resolve()), "sha256": state["kb_sha256"], "report": state["kb_report"]},
        build_seconds=time.perf_counter() - started,
    )
    del vectors
    shutil.rmtree(work)
    return index


def update_index(config: BuildConfig) -> EntityIndex:
    """Encode the delta KB `config.kb` and add or replace its entities in the index at `config.out`."""
    out = Path(config.out)
    fingerprint, dim = model_identity(config.model)
    read_checked_manifest(out, fingerprint, dim)  # refuse before encoding anything
    work = out / UPDATE_DIR
    state = prepare_work_dir(work, Path(config.kb), fingerprint, config.resume)
    encode_kb(work, config, state["rows"])
    ids, popularity, aliases, vectors = assemble(work, state["rows"], dim)
    index = EntityIndex.load(out, fingerprint, expect_dim=dim)
    report = index.update(ids, np.asarray(vectors), popularity=popularity, aliases=aliases,
                          kb={"path": str(Path(config.kb).resolve()), "sha256": state["kb_sha256"]})
    LOG.info("update: %d added, %d replaced, revision %d", report.added, report.replaced, report.revision)
    del vectors
    shutil.rmtree(work)
    return index
