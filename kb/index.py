"""The sharded entity index on disk: shards of vectors + ids + a FAISS index, and `manifest.json`.

Layout of an index folder (the class owns the names):

    manifest.json                  what was indexed, with which model, and every file's sha256
    pca.faiss                      the PCA transform, trained once, when --pca was given
    shard-00000.r0.ids.txt         entity ids, one a line, in row order
    shard-00000.r0.vectors.npy     (n, dim) float32/float16 unit vectors (the exact vectors indexed)
    shard-00000.r0.index.faiss     the FAISS index of an IVF/HNSW shard (a flat shard is its vectors)
    shard-00000.r0.popularity.npy  (n,) int64 popularity of the shard's entities (the KB's field), for the prior
    shard-00000.r0.aliases.jsonl   the KB's aliases of each entity, a JSON list a line, for the alias prior

`r0` is the revision that wrote the file: an update writes new files and then the manifest, so an
interrupted update leaves the previous index intact. Search returns `D (Q, k)` scores and
`I (Q, k)` entity ids; shard results are merged to the exact global top-k.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

try:
    import faiss
except ImportError as err:  # an extra, so that CPU and GPU builds are alternatives
    raise ImportError("FAISS is not installed: pip install 'onegen-el[cpu]' (faiss-cpu) or 'onegen-el[gpu]' "
                      "(faiss-gpu-cu12)") from err

from kb.files import atomic_output, sha256_file
from kb.jsonl import is_one_line
from kb.lookup import VectorsById
from kb.manifest import DTYPES, IndexCorruptError, IndexMismatchError, IndexSpec, Manifest, ShardInfo
from kb.manifest import fingerprints_match

LOG = logging.getLogger(__name__)

PCA_FILE = "pca.faiss"
PCA_TRAIN_MAX = 200_000  # rows sampled to fit the PCA
ADD_BLOCK = 65_536  # rows converted to float32 at a time when filling a FAISS index
IVF_MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per list
NO_ROW = np.iinfo(np.int64).max  # global row of an empty result slot
TRAIN_PER_LIST = 256  # training rows per IVF list (FAISS samples down to this anyway)


def now_utc() -> str:
    """The current time, ISO-8601 UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def shard_file(name: str, revision: int, kind: str) -> str:
    """File name of one part ("ids", "vectors", "index", "popularity" or "aliases") of a shard written at `revision`."""
    suffix = {"ids": "ids.txt", "vectors": "vectors.npy", "index": "index.faiss", "popularity": "popularity.npy",
              "aliases": "aliases.jsonl"}[kind]
    return f"{name}.r{revision}.{suffix}"


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n, 1)
    return x / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------------------------------------
# FAISS index construction
# ---------------------------------------------------------------------------------------------


def ivf_nlist(spec: IndexSpec, n: int) -> int:
    """Number of IVF lists for a shard of `n` vectors: the spec's, else ~4*sqrt(n), trainable on n."""
    nlist = spec.nlist or int(4 * np.sqrt(n))
    return max(1, min(nlist, n // IVF_MIN_POINTS_PER_LIST or 1))


def new_faiss_index(spec: IndexSpec, dim: int, dtype: str, n: int) -> faiss.Index:
    """An empty (untrained) inner-product FAISS index for a shard of `n` vectors."""
    codec = "Flat" if dtype == "float32" else "SQfp16"
    if spec.kind == "flat":
        description = codec
    elif spec.kind == "ivf":
        description = f"IVF{ivf_nlist(spec, n)},{codec}"
    else:
        description = f"HNSW{spec.hnsw_m},{codec}" if dtype == "float32" else f"HNSW{spec.hnsw_m}_SQfp16"
    index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    set_search_params(index, spec)
    if spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = spec.ef_construction
    return index


def set_search_params(index: faiss.Index, spec: IndexSpec) -> None:
    """Apply nprobe (IVF) or efSearch (HNSW) from the spec to a loaded index."""
    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = spec.ef_search


def add_in_blocks(index: faiss.Index, vectors: np.ndarray) -> None:
    """Add (n, d) vectors of any float dtype (or a memmap) to `index` a block at a time."""
    for start in range(0, len(vectors), ADD_BLOCK):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=np.float32))


def fill_index(spec: IndexSpec, vectors: np.ndarray, dtype: str, template: faiss.Index | None = None) -> faiss.Index:
    """A FAISS index holding `vectors` (n, d).

    With a trained IVF `template` (an older shard's index) its coarse quantizer is reused, so a
    small update shard needs no training of its own.
    """
    n, dim = vectors.shape
    if spec.kind == "ivf" and template is not None:
        index = faiss.clone_index(template)
        index.reset()  # keeps the trained quantizer, drops the vectors
    else:
        index = new_faiss_index(spec, dim, dtype, n)
        if not index.is_trained:
            index.train(sample_rows(vectors, TRAIN_PER_LIST * ivf_nlist(spec, n)))
    set_search_params(index, spec)
    add_in_blocks(index, vectors)
    return index


def sample_rows(vectors: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Up to `limit` rows of `vectors` (a random subset, in row order), float32."""
    n = len(vectors)
    if n <= limit:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Top-k merge
# ---------------------------------------------------------------------------------------------


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact global top-k from per-shard results [(D (Q, k_s), I (Q, k_s) ids, R (Q, k_s) global rows)].

    Equal scores are ordered by global row, so the result does not depend on how rows are sharded.
    """
    scores = np.concatenate([d for d, _, _ in parts], axis=1)  # (Q, sum k_s)
    ids = np.concatenate([i for _, i, _ in parts], axis=1)  # (Q, sum k_s)
    rows = np.concatenate([r for _, _, r in parts], axis=1)  # (Q, sum k_s)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]  # (Q, k): by score desc, then row asc
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def merge_scores(parts: Sequence[list[dict[str, float]]], queries: int) -> list[dict[str, float]]:
    """Per query, the {entity id: score} of every shard together (an id lives in one shard)."""
    merged: list[dict[str, float]] = [{} for _ in range(queries)]
    for part in parts:
        for found, scores in zip(merged, part):
            found.update(scores)
    return merged


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


@dataclass
class IndexShard:
    """One shard in memory: its ids, its vectors (memory-mapped) and its FAISS index."""

    ids: np.ndarray  # (n,) object array of entity ids; row i is FAISS label i
    index: faiss.Index  # inner-product index over the shard's (n, dim) vectors
    offset: int = 0  # global row of this shard's row 0 (shards in manifest order)
    vectors: np.ndarray | None = None  # (n, dim) the stored vectors, for `score`
    _by_id: VectorsById | None = field(default=None, init=False, repr=False)  # built on the first `score`

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of prepared queries x (Q, dim): D (Q, k) float32, I (Q, k) ids (None where no hit),
        R (Q, k) global rows (for merging; a large sentinel where no hit)."""
        hits = min(k, self.index.ntotal)
        scores = np.full((len(x), k), -np.inf, dtype=np.float32)  # (Q, k)
        ids = np.full((len(x), k), None, dtype=object)  # (Q, k)
        rows = np.full((len(x), k), NO_ROW, dtype=np.int64)  # (Q, k)
        if hits:
            d, labels = self.index.search(x, hits)  # (Q, hits) each
            found = labels >= 0
            scores[:, :hits] = np.where(found, d, -np.inf)
            ids[:, :hits] = np.where(found, self.ids[np.maximum(labels, 0)], None)
            rows[:, :hits] = np.where(found, labels + self.offset, NO_ROW)
        return scores, ids, rows

    def score(self, x: np.ndarray, wanted: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Per prepared query x (Q, dim), {entity id: score} of its `wanted` ids that this shard holds."""
        if self._by_id is None:
            if self.vectors is None:
                raise ValueError("this shard was made without its vectors: load it with IndexShard.load to score ids")
            self._by_id = VectorsById(self.ids, self.vectors)
        return self._by_id.score(x, wanted)

    def to_gpu(self, device: int = 0) -> IndexShard:
        """The shard with its index on a GPU where FAISS has a GPU version of it (flat, IVF), else as it is."""
        if isinstance(faiss.downcast_index(self.index), faiss.IndexHNSW):
            return self  # no GPU HNSW in FAISS
        try:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device, self.index)
        except RuntimeError as err:  # e.g. a flat float16 scalar quantizer
            LOG.warning("shard index %s stays on the CPU: %s", type(self.index).__name__, err)
            return self
        return IndexShard(self.ids, index, self.offset, self.vectors)

    @classmethod
    def load(cls, directory: Path, manifest: Manifest, shard_no: int, verify: bool = True) -> IndexShard:
        """Read one shard, checking its files exist, match their checksums and the manifest's shape."""
        info = manifest.shards[shard_no]
        rebuild = manifest.rebuild_command(directory)
        check_files(directory, info.files, rebuild, verify)
        revision_files = {part: directory / name for part, name in shard_parts(info).items()}
        vectors = np.load(revision_files["vectors.npy"], mmap_mode="r")
        ids = np.array(revision_files["ids.txt"].read_text(encoding="utf-8").splitlines(), dtype=object)
        expected = (info.count, manifest.dim)
        if vectors.shape != expected or len(ids) != info.count or vectors.dtype != np.dtype(manifest.dtype):
            raise IndexCorruptError(
                f"shard {info.name}: vectors {vectors.shape} {vectors.dtype} and {len(ids)} ids, manifest says "
                f"{expected} {manifest.dtype}. Rebuild the index with: {rebuild}"
            )
        if "index.faiss" in revision_files:
            index = faiss.read_index(str(revision_files["index.faiss"]))
            if index.d != manifest.dim or index.ntotal != info.count:
                raise IndexCorruptError(
                    f"shard {info.name}: FAISS index has d={index.d}, {index.ntotal} vectors; manifest says "
                    f"d={manifest.dim}, {info.count}. Rebuild the index with: {rebuild}"
                )
            set_search_params(index, manifest.index)
        else:  # a flat shard: its vectors are the index
            index = fill_index(manifest.index, vectors, manifest.dtype)
        return cls(ids=ids, index=index, offset=sum(s.count for s in manifest.shards[:shard_no]), vectors=vectors)


def shard_parts(info: ShardInfo) -> dict[str, str]:
    """The shard's files by part: {"ids.txt": name, "vectors.npy": name, ...} (names as in the manifest)."""
    return {name.split(".", 2)[2]: name for name in info.files}


def check_files(directory: Path, files: dict[str, str], rebuild: str, verify: bool = True) -> None:
    """Refuse index files (name -> sha256) that are missing or, with `verify`, differ from their checksum."""
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise IndexCorruptError(f"shard file missing: {path}. The index is incomplete; rebuild it with: {rebuild}")
        if verify and sha256_file(path) != digest:
            raise IndexCorruptError(
                f"checksum mismatch for {path} (manifest {digest[:12]}..., file differs): the shard is corrupt. "
                f"Rebuild the index with: {rebuild}"
            )


def check_ids(ids: Sequence[str]) -> None:
    """Refuse ids that ids.txt could not give back: empty, or holding a line break (it is read with splitlines)."""
    bad = [i for i in ids if not is_one_line(i)]
    if bad:
        raise ValueError(f"entity ids must be non-empty and hold no line break (\\n, \\r, \\u2028, \\x85, ...), got {bad[:3]!r}; "
                         "read the KB with kb.jsonl.read_kb, which skips such lines")


def write_shard(
    directory: Path, name: str, revision: int, ids: Sequence[str], vectors: np.ndarray, index: faiss.Index | None,
    popularity: np.ndarray | None = None, aliases: Sequence[Sequence[str]] | None = None,
) -> ShardInfo:
    """Write one shard's files (atomically each) and return its manifest entry; `popularity` (n,) and
    `aliases` (n lists of names) are stored when given."""
    check_ids(ids)
    files = {}
    with atomic_output(directory / shard_file(name, revision, "ids")) as f:
        f.write("".join(f"{i}\n" for i in ids))
    with atomic_output(directory / shard_file(name, revision, "vectors"), "wb") as f:
        np.save(f, vectors)
    if popularity is not None:
        with atomic_output(directory / shard_file(name, revision, "popularity"), "wb") as f:
            np.save(f, np.asarray(popularity, dtype=np.int64))
    if aliases is not None:
        with atomic_output(directory / shard_file(name, revision, "aliases")) as f:
            f.write("".join(json.dumps(list(names), ensure_ascii=False) + "\n" for names in aliases))
    if index is not None:
        path = directory / shard_file(name, revision, "index")
        with atomic_output(path, "wb") as f:
            f.write(faiss.serialize_index(index).tobytes())
    for kind in ("ids", "vectors", "index", "popularity", "aliases"):
        path = directory / shard_file(name, revision, kind)
        if path.is_file():
            files[path.name] = sha256_file(path)
    return ShardInfo(name=name, count=len(ids), files=files)


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------


@dataclass
class UpdateReport:
    """What `EntityIndex.update` changed."""

    added: int  # new entities (in a new shard)
    replaced: int  # existing entities whose vector was overwritten in place
    revision: int  # manifest revision after the update


class EntityIndex:
    """A loaded index: all shards in this process; `search` fans out and merges the exact top-k."""

    def __init__(self, directory: Path, manifest: Manifest, shards: list[IndexShard], pca: faiss.VectorTransform | None):
        self.directory = directory  # the index folder
        self.manifest = manifest  # its manifest.json
        self.shards = shards  # one per manifest shard, in order
        self.pca = pca  # trained PCA transform, or None

    def __len__(self) -> int:
        return self.manifest.entity_count

    @classmethod
    def load(
        cls, directory: str | Path, expect: dict | None = None, *, expect_dim: int | None = None, verify: bool = True
    ) -> EntityIndex:
        """Open an index folder, refusing one that does not fit the model or is damaged.

        Args:
            expect: the encoder's fingerprint (`OneGen.fingerprint()`); a different one is refused.
            expect_dim: the encoder's hidden size; a different manifest input_dim is refused.
            verify: check every file's sha256 (reads every byte once).
        """
        directory = Path(directory)
        manifest = read_checked_manifest(directory, expect, expect_dim)
        pca = load_pca(directory, manifest, verify)
        shards = [IndexShard.load(directory, manifest, s, verify) for s in range(len(manifest.shards))]
        return cls(directory, manifest, shards, pca)

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        """Queries (Q, input_dim) -> (Q, dim) float32 as indexed (PCA applied, unit norm)."""
        return prepare_queries(queries, self.manifest, self.pca)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k entities of each query (Q, input_dim): D (Q, k) float32 scores, I (Q, k) ids (None: no hit)."""
        x = self.prepare(queries)
        return merge_topk([shard.search(x, k) for shard in self.shards], k)

    def score(self, queries: np.ndarray, wanted: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Per query (Q, input_dim), {entity id: score} of each of its `wanted` ids in the index (`kb.lookup`)."""
        x = self.prepare(queries)
        return merge_scores([shard.score(x, wanted) for shard in self.shards], len(queries))

    @classmethod
    def build(
        cls,
        directory: str | Path,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        fingerprint: dict,
        num_shards: int = 1,
        dtype: str = "float32",
        spec: IndexSpec | None = None,
        pca_dim: int | None = None,
        kb: dict | None = None,
        popularity: Sequence[int] | None = None,
        aliases: Sequence[Sequence[str]] | None = None,
        build_seconds: float = 0.0,
    ) -> EntityIndex:
        """Write a new index of `vectors` (N, D) (unit rows; a memmap is fine) named by `ids` (N,).

        Shards are contiguous row ranges of near-equal size. With `pca_dim`, a PCA to that many
        dimensions is fitted once on a sample and applied (and rows re-normalised) before indexing.
        `popularity` (N,), the KB's popularity of each entity, is stored beside the shards for the
        popularity prior (`stored_popularity`); `aliases` (N lists, or an Arrow list array turned into Python
        lists a shard at a time), the KB's aliases of each, for the alias prior (`stored_aliases`).
        """
        directory = Path(directory)
        spec = spec or IndexSpec()
        n, input_dim = vectors.shape
        if len(ids) != n:
            raise ValueError(f"number of ids and vectors must be the same, got {len(ids)} and {n}")
        if popularity is not None and len(popularity) != n:
            raise ValueError(f"number of popularity values and ids must be the same, got {len(popularity)} and {n}")
        if aliases is not None and len(aliases) != n:
            raise ValueError(f"number of alias lists and ids must be the same, got {len(aliases)} and {n}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not 1 <= num_shards <= max(n, 1):
            raise ValueError(f"num_shards must be between 1 and the entity count {n}, got {num_shards}")
        if len(set(ids)) != n:
            raise ValueError("entity ids must be unique; deduplicate the KB (kb.jsonl.read_kb does)")
        check_ids(ids)  # before any file is written
        started = time.perf_counter()
        directory.mkdir(parents=True, exist_ok=True)
        pca_entry = None
        pca = None
        if pca_dim:
            if not 0 < pca_dim < input_dim:
                raise ValueError(f"--pca must be between 1 and the model dimension {input_dim}, got {pca_dim}")
            pca = faiss.PCAMatrix(input_dim, pca_dim)
            pca.train(sample_rows(vectors, PCA_TRAIN_MAX))
            with atomic_output(directory / PCA_FILE, "wb") as f:
                writer = faiss.VectorIOWriter()
                faiss.write_VectorTransform(pca, writer)
                f.write(faiss.vector_to_array(writer.data).tobytes())
            pca_entry = {"file": PCA_FILE, "sha256": sha256_file(directory / PCA_FILE)}
        counts = None if popularity is None else np.asarray(popularity, dtype=np.int64)  # (N,)
        bounds = np.linspace(0, n, num_shards + 1).astype(int)
        shards = []
        for s in range(num_shards):
            rows = slice(bounds[s], bounds[s + 1])
            shard_vectors = transform(vectors[rows], pca).astype(dtype)  # (n_s, dim)
            index = None if spec.kind == "flat" else fill_index(spec, shard_vectors, dtype)
            shards.append(write_shard(directory, f"shard-{s:05d}", 0, list(ids[rows]), shard_vectors, index,
                                      None if counts is None else counts[rows],
                                      None if aliases is None else as_lists(aliases[rows])))
            LOG.info("wrote shard %d/%d (%d entities)", s + 1, num_shards, shards[-1].count)
        manifest = Manifest(
            model=fingerprint,
            input_dim=input_dim,
            dim=pca_dim or input_dim,
            dtype=dtype,
            index=spec,
            entity_count=n,
            shards=shards,
            kb=dict(kb or {}, updates=[]),
            built_at=now_utc(),
            build_seconds=round(build_seconds + time.perf_counter() - started, 3),
            pca=pca_entry,
        )
        manifest.save(directory)
        return cls.load(directory, fingerprint, verify=False)

    def update(self, ids: Sequence[str], vectors: np.ndarray, *, kb: dict | None = None,
               popularity: Sequence[int] | None = None, aliases: Sequence[Sequence[str]] | None = None) -> UpdateReport:
        """Add or replace entities with encoder vectors (M, input_dim), without touching the others.

        A replaced entity's row is overwritten in its shard (its FAISS index rebuilt from the stored
        vectors, no re-encoding), so its old vector can no longer be returned; new entities go to a
        new shard. `popularity` (M,) replaces the stored popularity of those rows (a shard that
        stored none, from an index built before popularity was stored, keeps storing none); so do `aliases` (M
        lists) for the stored aliases. Files
        of the new revision are written first, then the manifest, then the superseded files are removed.
        """
        if len(ids) != len(vectors):
            raise ValueError(f"number of ids and vectors must be the same, got {len(ids)} and {len(vectors)}")
        if popularity is not None and len(popularity) != len(ids):
            raise ValueError(f"number of popularity values and ids must be the same, got {len(popularity)} and {len(ids)}")
        if aliases is not None and len(aliases) != len(ids):
            raise ValueError(f"number of alias lists and ids must be the same, got {len(aliases)} and {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError("update ids must be unique; deduplicate the delta KB (kb.jsonl.read_kb does)")
        check_ids(ids)  # before any file is written
        aliases = None if aliases is None else as_lists(aliases)
        manifest = self.manifest
        revision = manifest.revision + 1
        x = prepare_queries(vectors, manifest, self.pca).astype(manifest.dtype)  # (M, dim)
        counts = None if popularity is None else np.asarray(popularity, dtype=np.int64)  # (M,)
        where = {entity_id: (s, row) for s, shard in enumerate(self.shards) for row, entity_id in enumerate(shard.ids)}
        by_shard: dict[int, list[tuple[int, int]]] = {}  # shard -> [(row in shard, row in x)]
        new_rows = []
        for j, entity_id in enumerate(ids):
            if entity_id in where:
                s, row = where[entity_id]
                by_shard.setdefault(s, []).append((row, j))
            else:
                new_rows.append(j)
        shards = list(manifest.shards)
        stale = []
        for s, pairs in by_shard.items():
            info = manifest.shards[s]
            parts = shard_parts(info)
            stored = np.load(self.directory / parts["vectors.npy"])  # (n_s, dim), in memory: this shard is rewritten
            rows, js = (np.array(c) for c in zip(*pairs))
            stored[rows] = x[js]
            stored_counts = None
            if counts is not None and "popularity.npy" in parts:
                stored_counts = np.load(self.directory / parts["popularity.npy"])  # (n_s,)
                stored_counts[rows] = counts[js]
            stored_aliases = None
            if aliases is not None and "aliases.jsonl" in parts:
                stored_aliases = read_aliases(self.directory / parts["aliases.jsonl"])
                for row, j in pairs:
                    stored_aliases[row] = aliases[j]
            index = None
            if manifest.index.kind != "flat":
                index = fill_index(manifest.index, stored, manifest.dtype, template=self.shards[s].index)
            shards[s] = write_shard(self.directory, info.name, revision, list(self.shards[s].ids), stored, index,
                                    stored_counts, stored_aliases)
            stale.extend(info.files)
        if new_rows:
            name = f"shard-{len(shards):05d}"
            index = None
            if manifest.index.kind != "flat":
                index = fill_index(manifest.index, x[new_rows], manifest.dtype, template=self.shards[0].index)
            shards.append(write_shard(self.directory, name, revision, [ids[j] for j in new_rows], x[new_rows], index,
                                      None if counts is None else counts[new_rows],
                                      None if aliases is None else [aliases[j] for j in new_rows]))
        manifest.shards = shards
        manifest.entity_count += len(new_rows)
        manifest.revision = revision
        manifest.updated_at = now_utc()
        manifest.kb.setdefault("updates", []).append(
            dict(kb or {}, added=len(new_rows), replaced=len(ids) - len(new_rows), at=manifest.updated_at)
        )
        manifest.save(self.directory)
        for name in stale:
            (self.directory / name).unlink(missing_ok=True)
        reloaded = EntityIndex.load(self.directory, manifest.model, verify=False)
        self.manifest, self.shards = reloaded.manifest, reloaded.shards
        return UpdateReport(added=len(new_rows), replaced=len(ids) - len(new_rows), revision=revision)


def transform(vectors: np.ndarray, pca: faiss.VectorTransform | None) -> np.ndarray:
    """Rows (n, input_dim) -> (n, dim) float32 unit rows, PCA applied when given."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return normalize(pca.apply(x)) if pca is not None else normalize(x)


def prepare_queries(queries: np.ndarray, manifest: Manifest, pca: faiss.VectorTransform | None) -> np.ndarray:
    """Check query shape against the manifest and map queries into the indexed space."""
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != manifest.input_dim:
        raise ValueError(
            f"queries must have shape (Q, {manifest.input_dim}) (the index's model dimension), got {queries.shape}; "
            "embed with the model the index was built with"
        )
    return transform(queries, pca)


def read_checked_manifest(directory: Path, expect: dict | None, expect_dim: int | None) -> Manifest:
    """The manifest of `directory`, refused when the model fingerprint or the dimension differs."""
    manifest = Manifest.read(directory)
    model = (expect or {}).get("model")
    if expect is not None and not fingerprints_match(manifest.model, expect):
        raise IndexMismatchError(
            f"the index in {directory} was built with model {manifest.model}, but the model in use is {expect}. "
            f"Rebuild it for this model with: {manifest.rebuild_command(directory, model)}"
        )
    if expect_dim is not None and expect_dim != manifest.input_dim:
        raise IndexMismatchError(
            f"the index in {directory} holds {manifest.input_dim}-dimensional model vectors, the model in use has "
            f"{expect_dim}. Rebuild it with: {manifest.rebuild_command(directory, model)}"
        )
    return manifest


def stored_ids(directory: str | Path) -> list[str]:
    """Every entity id of a built index (updates included), shard by shard. Refuses missing or changed files."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    ids: list[str] = []
    for info in manifest.shards:
        name = shard_parts(info)["ids.txt"]
        check_files(directory, {name: info.files[name]}, manifest.rebuild_command(directory))
        ids += (directory / name).read_text(encoding="utf-8").splitlines()
    return ids


def stored_popularity(directory: str | Path) -> dict[str, int] | None:
    """Entity id -> the KB popularity stored with the index (updates included); None when a shard stores
    none (an index built before popularity was stored). Refuses missing or changed files."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    counts: dict[str, int] = {}
    for info in manifest.shards:
        parts = shard_parts(info)
        if "popularity.npy" not in parts:
            return None
        names = (parts["ids.txt"], parts["popularity.npy"])
        check_files(directory, {name: info.files[name] for name in names}, manifest.rebuild_command(directory))
        ids = (directory / names[0]).read_text(encoding="utf-8").splitlines()
        values = np.load(directory / names[1])  # (n_s,) int64
        if len(values) != len(ids):
            raise IndexCorruptError(f"shard {info.name}: {len(values)} popularity values for {len(ids)} ids. "
                                    f"Rebuild the index with: {manifest.rebuild_command(directory)}")
        counts.update(zip(ids, values.tolist()))
    return counts


def as_lists(aliases: Sequence[Sequence[str]] | pa.ListArray) -> list[list[str]]:
    """Alias lists as Python lists, from Python sequences or an Arrow list array."""
    return aliases.to_pylist() if isinstance(aliases, pa.Array) else [list(names) for names in aliases]


def read_aliases(path: Path) -> list[list[str]]:
    """A shard's aliases file: one list of names per entity, in row order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def stored_aliases(directory: str | Path) -> Iterator[tuple[str, str]]:
    """Every (alias, entity id) pair stored with the index (updates included), streamed shard by shard; a shard
    that stores none (built before aliases were stored) gives none, with a warning when no shard does. Refuses
    missing or changed files."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    if not any("aliases.jsonl" in shard_parts(info) for info in manifest.shards):
        LOG.warning("the index %s stores no aliases (built before they were stored): the KB's aliases are not among "
                    "the names of the alias prior; rebuild it to have them", directory)
    for info in manifest.shards:
        parts = shard_parts(info)
        if "aliases.jsonl" not in parts:
            continue
        names = (parts["ids.txt"], parts["aliases.jsonl"])
        check_files(directory, {name: info.files[name] for name in names}, manifest.rebuild_command(directory))
        ids = (directory / names[0]).read_text(encoding="utf-8").splitlines()
        rows = 0
        with open(directory / names[1], encoding="utf-8") as f:
            for line in f:
                if rows < len(ids):
                    yield from ((alias, ids[rows]) for alias in json.loads(line))
                rows += 1
        if rows != len(ids):
            raise IndexCorruptError(f"shard {info.name}: {rows} alias lists for {len(ids)} ids. "
                                    f"Rebuild the index with: {manifest.rebuild_command(directory)}")


def load_pca(directory: Path, manifest: Manifest, verify: bool) -> faiss.VectorTransform | None:
    """The stored PCA transform of an index (checked against its checksum and dimensions), or None."""
    if manifest.pca is None:
        return None
    path = directory / manifest.pca["file"]
    rebuild = manifest.rebuild_command(directory)
    if not path.is_file() or (verify and sha256_file(path) != manifest.pca["sha256"]):
        raise IndexCorruptError(f"PCA file {path} is missing or corrupt; rebuild the index with: {rebuild}")
    pca = faiss.read_VectorTransform(str(path))
    if (pca.d_in, pca.d_out) != (manifest.input_dim, manifest.dim):
        raise IndexCorruptError(
            f"PCA file {path} maps {pca.d_in} -> {pca.d_out}, manifest says {manifest.input_dim} -> {manifest.dim}; "
            f"rebuild the index with: {rebuild}"
        )
    return pca
