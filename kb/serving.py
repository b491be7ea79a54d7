"""Serving an entity index with Ray: one actor per shard, and a client that fans a query batch
out to all of them and merges the exact global top-k.

`RayIndexClient` has the same `search(queries, k) -> (D, I)` and `score(queries, wanted)` (the scores of entities
named by id, `kb.lookup`) as the in-process `EntityIndex`, so a caller picks one with `open_index(..., use_ray=...)`
and codes against either.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import ray

from kb.index import (EntityIndex, IndexShard, faiss, load_pca, merge_scores, merge_topk, prepare_queries,
                      read_checked_manifest)
from kb.manifest import IndexLoadError, Manifest

LOG = logging.getLogger(__name__)


@ray.remote
class ShardActor:
    """Holds one shard of an index (on a GPU when it was given one and FAISS has GPU support)."""

    def __init__(self, directory: str, manifest: Manifest, shard_no: int):
        self.directory = Path(directory)  # the index folder (a path every node can read)
        self.manifest = manifest  # the manifest the client checked
        self.shard_no = shard_no  # which manifest shard this actor serves
        self.shard: IndexShard | None = None  # loaded by load()

    def load(self, verify: bool, use_gpu: bool) -> dict:
        """Read and check the shard (errors reach the caller as their own type); returns its size and device."""
        shard = IndexShard.load(self.directory, self.manifest, self.shard_no, verify)
        on_gpu = use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        self.shard = shard.to_gpu() if on_gpu else shard
        return {"shard": self.shard_no, "count": len(shard.ids), "gpu": on_gpu}

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of prepared queries x (Q, dim) in this shard: D (Q, k), I (Q, k) ids, R (Q, k) global rows."""
        return self.shard.search(x, k)

    def score(self, x: np.ndarray, wanted: list[list[str]]) -> list[dict[str, float]]:
        """Per prepared query x (Q, dim), {entity id: score} of its `wanted` ids in this shard."""
        return self.shard.score(x, wanted)


class RayIndexClient:
    """An index served by one `ShardActor` per shard; `search` fans out and merges the global top-k."""

    def __init__(
        self,
        directory: str | Path,
        expect: dict | None = None,
        *,
        expect_dim: int | None = None,
        verify: bool = True,
        num_cpus: float = 0.5,
        num_gpus: float = 0.0,
    ):
        """Start the shard actors (Ray must be initialised) and wait until every shard is loaded.

        Args:
            expect, expect_dim, verify: as in `EntityIndex.load`; refusals are raised here.
            num_cpus: CPUs reserved per shard actor (small: searching is mostly memory-bound).
            num_gpus: GPU share per shard actor; 0 (the default) keeps every shard on the CPU, so the
                GPUs stay free for the model replicas that need them whole.

        A shard that fails its checks raises its own `IndexLoadError` (one line naming the file and
        the rebuild command), not Ray's wrapper of it.
        """
        directory = Path(directory).resolve()
        self.directory = directory  # the index folder
        self.manifest = read_checked_manifest(directory, expect, expect_dim)  # checked against the model
        self.pca = load_pca(directory, self.manifest, verify)  # applied to queries here, once per batch
        shards = len(self.manifest.shards)
        self.actors = [
            # one actor per shard: small CPU share, a GPU share only when asked for
            ShardActor.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(str(directory), self.manifest, s)
            for s in range(shards)
        ]
        try:
            loaded = ray.get([actor.load.remote(verify, num_gpus > 0) for actor in self.actors])
        except Exception as err:
            self.close()
            cause = getattr(err, "cause", None)  # a RayTaskError wraps what the actor raised
            if isinstance(cause, IndexLoadError):
                raise cause from None  # the refusal itself: its message names the file and the rebuild command
            raise
        LOG.info("serving %d shards from %s: %s", shards, directory, loaded)

    def __len__(self) -> int:
        return self.manifest.entity_count

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k entities of each query (Q, input_dim): D (Q, k) float32 scores, I (Q, k) ids (None: no hit)."""
        x = ray.put(prepare_queries(queries, self.manifest, self.pca))  # (Q, dim), shipped once to all shards
        return merge_topk(ray.get([actor.search.remote(x, k) for actor in self.actors]), k)

    def score(self, queries: np.ndarray, wanted: list[list[str]]) -> list[dict[str, float]]:
        """Per query (Q, input_dim), {entity id: score} of each of its `wanted` ids in the index, from every shard."""
        x = ray.put(prepare_queries(queries, self.manifest, self.pca))
        wanted_ref = ray.put(wanted)
        return merge_scores(ray.get([actor.score.remote(x, wanted_ref) for actor in self.actors]), len(queries))

    def close(self) -> None:
        """Stop the shard actors."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def open_index(
    directory: str | Path, expect: dict | None = None, *, expect_dim: int | None = None, use_ray: bool = False, **ray_options
) -> EntityIndex | RayIndexClient:
    """The index at `directory`, in this process (small indexes) or served by Ray shard actors."""
    if use_ray:
        return RayIndexClient(directory, expect, expect_dim=expect_dim, **ray_options)
    return EntityIndex.load(directory, expect, expect_dim=expect_dim)
