"""Build (or update) the entity index of a KB: `onegen-index --kb KB.jsonl --out DIR` (installed
command; `python jobs/build_index.py` is the same).

A Ray Data job: KB rows -> [SE] vectors from a pool of model replicas (a GPU each where the
cluster has GPUs) -> index shards + manifest.json. Connects to the cluster in RAY_ADDRESS, else
starts a local one. The library code is onegen/index_build.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kb.manifest import DTYPES, INDEX_KINDS, IndexSpec
from onegen.cli_logging import add_log_level, setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=Path, help="KB JSONL (DESIGN section 4); not needed with --update")
    parser.add_argument("--out", required=True, type=Path, help="index folder")
    parser.add_argument("--model", default=None, help="model folder or name (default: the trained default, SmolLM2-135M-Instruct + the bundled OneGen adapter)")
    parser.add_argument("--shards", type=int, default=1, help="index shards (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="entities per forward pass (default 32)")
    parser.add_argument("--chunk-rows", type=int, default=1024, help="entities per resumable chunk (default 1024)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored vector dtype")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat", help="FAISS index per shard (default flat = exact)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists per shard (default ~4*sqrt(shard size))")
    parser.add_argument("--nprobe", type=int, default=IndexSpec.nprobe, help="IVF lists searched per query")
    parser.add_argument("--hnsw-m", type=int, default=IndexSpec.hnsw_m, help="HNSW neighbours per node")
    parser.add_argument("--ef-search", type=int, default=IndexSpec.ef_search, help="HNSW search breadth")
    parser.add_argument("--pca", type=int, default=None, metavar="D", help="reduce vectors to D dimensions with PCA")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build (or update) in --out")
    parser.add_argument("--update", type=Path, default=None, metavar="KB_DELTA",
                        help="add or replace the entities of KB_DELTA in the existing index at --out")
    parser.add_argument("--num-replicas", type=int, default=1, help="model replicas (one GPU each where there are GPUs)")
    add_log_level(parser)
    args = parser.parse_args(argv)
    if args.kb is None and args.update is None:
        parser.error("--kb KB.jsonl is required (or --update KB_DELTA to change an existing index)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        from onegen.index_build import BuildConfig, build_index, update_index
    except ImportError as err:  # FAISS is an extra: the message says what to install
        sys.exit(f"error: {err}")
    import ray

    from onegen.sources import check_model

    kb = Path(args.update or args.kb)
    try:  # what needs no model, checked before Ray starts
        check_model(args.model)
        if not kb.is_file():
            raise FileNotFoundError(f"KB {kb} not found: pass {'--update' if args.update else '--kb'} FILE (JSONL, DESIGN section 4)")
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    config = BuildConfig(
        kb=kb,
        out=args.out,
        model=args.model,
        shards=args.shards,
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        dtype=args.dtype,
        index=IndexSpec(args.index, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search),
        pca=args.pca,
        resume=args.resume,
        num_replicas=args.num_replicas,
    )
    ray.init(logging_level=logging.getLogger().getEffectiveLevel())  # the cluster in RAY_ADDRESS, else a local one
    try:
        index = update_index(config) if args.update else build_index(config)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # an index already there, a KB that does not fit: one line
        sys.exit(f"error: {err}")
    finally:
        ray.shutdown()
    manifest = index.manifest
    print(
        f"index {args.out}: {manifest.entity_count} entities, {len(manifest.shards)} shards, dim {manifest.dim} "
        f"{manifest.dtype}, {manifest.index.kind}, revision {manifest.revision}, built in {manifest.build_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
