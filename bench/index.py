"""Entity-index benchmark: build time, memory, queries/s and recall of each index option.

    python bench/index.py [--n 1000000] [--dim 256] [--queries 1024]

Synthetic unit vectors with the structure of entity embeddings: a mixture of Gaussians on the
sphere (Zipf-sized clusters of varying spread), queries near a random entity. Every variant is
built with `EntityIndex.build` into a temporary folder and searched through `EntityIndex.search`
(the code the link job runs); recall is measured against exact flat search in the same run, and
queries/s are side-by-side ratios on one machine (compare rows, not machines). The last columns
project each variant to 6M x 4096 from its measured per-vector costs (see `project`).
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass

import faiss
import numpy as np

from kb.index import EntityIndex, set_search_params
from kb.manifest import IndexSpec

FINGERPRINT = {"model": "synthetic", "weights_sha256": "0" * 64, "tokenizer_sha256": "0" * 64}
TARGET_N, TARGET_DIM = 6_000_000, 4096  # full English Wikipedia at a Llama-2-7B hidden size


def clustered_unit_vectors(n: int, dim: int, seed: int = 0, block: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit vectors from a mixture of Gaussians on the sphere (Zipf cluster sizes)."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // 100)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8  # Zipf-like popularity of topics
    spread = rng.uniform(0.6, 1.3, clusters).astype(np.float32)  # within-cluster cosine ~0.6-0.85
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        c = rng.choice(clusters, size=m, p=weights / weights.sum())
        x = centers[c] + spread[c, None] * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def near_queries(vectors: np.ndarray, nq: int, noise: float = 0.4, seed: int = 1) -> np.ndarray:
    """(nq, dim) unit queries, each a noisy copy of a random indexed vector (a mention near its entity)."""
    rng = np.random.default_rng(seed)
    base = vectors[rng.choice(len(vectors), size=nq, replace=False)]
    x = base + noise * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(vectors.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_bytes(index: faiss.Index) -> int:
    """Bytes a FAISS index holds in RAM (codes, ids, lists, graph links, centroids)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        return index.ntotal * (index.code_size + 8) + index.nlist * index.d * 4
    if isinstance(index, faiss.IndexHNSW):
        return index_bytes(index.storage) + index.hnsw.neighbors.size() * 4 + index.hnsw.offsets.size() * 8
    return index.ntotal * index.sa_code_size()


@dataclass
class Variant:
    """One index option to measure."""

    name: str  # row label
    spec: IndexSpec  # FAISS index type and parameters
    dtype: str = "float32"  # stored vector dtype
    pca: bool = False  # reduce to --pca dimensions first
    shards: int = 1  # number of shards
    search: tuple = ()  # extra search settings to measure on the same build: (("nprobe", 64), ...)


def variants(n: int) -> list[Variant]:
    nlist = max(16, int(math.sqrt(n)))  # ~sqrt(n) lists: cheap to train, ~sqrt(n) vectors per list
    ivf = IndexSpec("ivf", nlist=nlist, nprobe=16)
    return [
        Variant("flat f32 (exact)", IndexSpec("flat")),
        Variant("flat f32, 4 shards", IndexSpec("flat"), shards=4),
        Variant("flat f16", IndexSpec("flat"), dtype="float16"),
        Variant("PCA-{pca} flat f32", IndexSpec("flat"), pca=True),
        Variant(f"IVF{nlist} f32", ivf, search=(("nprobe", 8), ("nprobe", 16), ("nprobe", 32), ("nprobe", 64))),
        Variant(f"IVF{nlist} f16", ivf, dtype="float16", search=(("nprobe", 32),)),
        Variant(f"IVF{nlist} f32, 4 shards", IndexSpec("ivf", nlist=nlist // 2, nprobe=16), shards=4, search=(("nprobe", 16),)),
        Variant("HNSW32 f32", IndexSpec("hnsw", hnsw_m=32, ef_construction=80), search=(("ef_search", 64), ("ef_search", 128))),
        Variant("HNSW32 f16", IndexSpec("hnsw", hnsw_m=32, ef_construction=80), dtype="float16", search=(("ef_search", 128),)),
    ]


def queries_per_second(index: EntityIndex, queries: np.ndarray, batch: int, k: int, limit: int) -> float:
    """Queries/s searching `limit` queries in batches of `batch`."""
    started = time.perf_counter()
    done = 0
    for start in range(0, limit, batch):
        index.search(queries[start : start + batch], k)
        done += len(queries[start : start + batch])
    return done / (time.perf_counter() - started)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k ids found in the approximate top-k."""
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def project(kind: str, build_s: float, ram: int, code_bytes: int, qps: float, n: int, dim: int) -> tuple:
    """Rough (build hours, RAM GB, queries/s at batch 256) at 6M x 4096 from costs measured at n x dim.

    Per-vector build cost and vector codes scale with the dimension (PCA keeps its ratio); lists,
    ids and graph links do not. Build and search scale with the vectors touched per insert or
    query: flat all n (search) / 1 (build), IVF with nlist ~ sqrt(n) about sqrt(n), HNSW about log(n).
    """
    d_ratio, n_ratio = TARGET_DIM / dim, TARGET_N / n
    touched = {"flat": n_ratio, "ivf": math.sqrt(n_ratio), "hnsw": math.log(TARGET_N) / math.log(n)}[kind]
    build_scale = 1.0 if kind == "flat" else touched
    build_h = build_s / n * TARGET_N * d_ratio * build_scale / 3600
    ram_gb = (code_bytes * d_ratio + (ram / n - code_bytes)) * TARGET_N / 1e9
    return build_h, ram_gb, qps / (touched * d_ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors (default 1M)")
    parser.add_argument("--dim", type=int, default=256, help="vector dimension (default 256)")
    parser.add_argument("--queries", type=int, default=1024, help="queries for recall and batch-256 speed")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--pca", type=int, default=None, help="PCA output dimension (default dim/2)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of variant names to run")
    args = parser.parse_args()
    k = 10
    pca_dim = args.pca or args.dim // 2
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; n={args.n:,} dim={args.dim} "
          f"queries={args.queries} (batch-1: {args.single})", flush=True)
    t0 = time.perf_counter()
    vectors = clustered_unit_vectors(args.n, args.dim)
    queries = near_queries(vectors, args.queries)
    ids = [f"E{i}" for i in range(args.n)]
    print(f"data generated in {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    exact = None
    header = (f"{'variant':<26} {'search':<11} {'build s':>8} {'RAM MB':>8} {'B/vec':>6} {'qps@1':>8} {'qps@256':>8} "
              f"{'x exact':>7} {'R@1':>6} {'R@10':>6} | {'6Mx4096: build h':>16} {'RAM GB':>7} {'qps@256':>8}")
    for variant in variants(args.n):
        if args.only and not any(s in variant.name for s in args.only.split(",")):
            continue
        name = variant.name.format(pca=pca_dim)
        pca = pca_dim if variant.pca else None
        with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
            started = time.perf_counter()
            index = EntityIndex.build(tmp, ids, vectors, fingerprint=FINGERPRINT, num_shards=variant.shards,
                                      dtype=variant.dtype, spec=variant.spec, pca_dim=pca)
            build_s = time.perf_counter() - started
            ram = sum(index_bytes(shard.index) for shard in index.shards)
            for setting in variant.search or ((None, None),):
                key, value = setting
                label = f"{key}={value}" if key else "-"
                if key:
                    spec = IndexSpec(**{**variant.spec.__dict__, key: value})
                    for shard in index.shards:
                        set_search_params(shard.index, spec)
                qps1 = queries_per_second(index, queries, 1, k, args.single)
                qps256 = queries_per_second(index, queries, 256, k, args.queries)
                _, found = index.search(queries, k)
                if exact is None:
                    exact = found  # the first variant is exact flat search
                r1 = float(np.mean(found[:, 0] == exact[:, 0]))
                r10 = recall(found, exact, k)
                kind = variant.spec.kind
                code_bytes = (pca or args.dim) * np.dtype(variant.dtype).itemsize
                proj = project(kind, build_s, ram, code_bytes, qps256, args.n, args.dim)
                rows.append((name, label, build_s, ram / 1e6, ram / args.n, qps1, qps256, r1, r10, *proj))
                print(f"  {name} {label}: build {build_s:.1f}s qps@1 {qps1:.0f} qps@256 {qps256:.0f} "
                      f"R@1 {r1:.3f} R@10 {r10:.3f}", flush=True)
            del index
    flat_qps = rows[0][6]
    print()
    print(header)
    print("-" * len(header))
    for name, label, build_s, ram_mb, bpv, qps1, qps256, r1, r10, build_h, ram_gb, qps_proj in rows:
        print(f"{name:<26} {label:<11} {build_s:>8.1f} {ram_mb:>8.0f} {bpv:>6.0f} {qps1:>8.0f} {qps256:>8.0f} "
              f"{qps256 / flat_qps:>7.1f} {r1:>6.3f} {r10:>6.3f} | {build_h:>16.2f} {ram_gb:>7.1f} {qps_proj:>8.1f}")
    best = [r for r in rows if r[8] >= 0.95 and r[6] >= 10 * flat_qps]
    print()
    print("target (recall@10 >= 0.95 at >= 10x exact flat queries/s): "
          + (", ".join(f"{r[0]} {r[1]}" for r in best) if best else "not met"))
    print(f"total {time.perf_counter() - t0:.0f} s; 6Mx4096 columns scale measured per-vector costs "
          "(vector-sized costs x dim ratio; visited vectors: flat n, IVF sqrt(n), HNSW log(n)); CPU, rough")


if __name__ == "__main__":
    main()
