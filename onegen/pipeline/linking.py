"""The real model and index behind the link job: OneGen replicas and index-shard actors.

With `--index DIR` the built index is used as it is (refused when its manifest names another
model). Without it, the index of `--kb` (default: the bundled `samples/kb.jsonl`) is built on
first use with `onegen.index_build.build_index` and cached under `cache_root()/indexes/`, keyed by the
model fingerprint and the KB's sha256.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import ray

from onegen.decide import PopularityPrior
from onegen.linker import SAMPLE_KB, cached_index_dir
from onegen.pipeline.job import JobConfig, Linking, index_id, model_id, replica_gpus
from onegen.pipeline.stages import onegen_annotator

LOG = logging.getLogger(__name__)

SHARD_CPUS = 0.25  # CPUs reserved per index-shard actor: search is memory-bound and short


def require_kb(kb: Path) -> None:
    """Refuse a KB file that does not exist, saying what to pass instead."""
    if not kb.is_file():
        raise FileNotFoundError(f"KB {kb} not found: pass --kb FILE (JSONL, DESIGN section 4) or --index DIR of a built index")


def ensure_index(kb: Path, model: str | None, fingerprint: dict) -> Path:
    """The cached index of `kb` for the model, built (resumably) when missing."""
    from kb.files import sha256_file
    from kb.manifest import MANIFEST_NAME
    from onegen.index_build import BuildConfig, build_index

    require_kb(kb)
    directory = cached_index_dir(fingerprint, sha256_file(kb), kb.stem)
    if not (directory / MANIFEST_NAME).is_file():
        LOG.info("building the index of %s for %s into %s (once)", kb, fingerprint["model"], directory)
        build_index(BuildConfig(kb=kb, out=directory, model=model, resume=(directory / ".build").is_dir()))
    return directory


def popularity_prior(directory: Path, weight: float) -> PopularityPrior | None:
    """The popularity prior of the entities of an index, from the popularity stored with it.

    None when the weight is 0. An index built before popularity was stored falls back, with one warning,
    to the KB files its manifest names: None when it names none or a file is gone or changed since the
    build (linking then goes on without the prior).
    """
    from kb.files import sha256_file
    from kb.index import stored_popularity
    from kb.manifest import Manifest

    if not weight:
        return None
    counts = stored_popularity(directory)
    if counts is not None:
        return PopularityPrior.from_counts(counts, weight=weight)
    # an index built before popularity was stored: read it from the KB files, as such an index always did
    kb = Manifest.read(directory).kb
    if not kb.get("path"):
        LOG.warning("no popularity prior: the index %s stores no popularity and its manifest names no KB file", directory)
        return None
    files = [(Path(kb["path"]), kb["sha256"])] + [(Path(u["path"]), u["sha256"]) for u in kb.get("updates", [])]
    for path, sha256 in files:
        if not path.is_file() or sha256_file(path) != sha256:
            LOG.warning("no popularity prior: the index %s stores no popularity and %s, a KB file of it, is gone or "
                        "changed since the build; rebuild the index to store it", directory, path)
            return None
    LOG.warning("the index %s stores no popularity (built before it was stored): read it from its KB files; "
                "rebuild the index to store it", directory)
    return PopularityPrior.from_kb(*(path for path, _ in files), weight=weight)


def shard_gpus(config: JobConfig, shards: int) -> float:
    """GPU share per index-shard actor: 0 (shards on CPUs) unless --shard-gpus asks, and then only when the GPUs left
    over still take a model replica (shards holding the GPUs that replicas need would stall the job)."""
    if not config.shard_gpus:
        return 0.0
    total, need = ray.cluster_resources().get("GPU", 0), replica_gpus(config)
    left = total - shards * config.shard_gpus
    if left < need:
        raise ValueError(
            f"--shard-gpus {config.shard_gpus:g} for {shards} index shards leaves {left:g} of the cluster's {total:g} GPUs, "
            f"less than a model replica needs ({need:g}). Pass --shard-gpus 0 (the default: shards on CPUs), a smaller "
            "share, or add GPUs.")
    return config.shard_gpus


def prepare_linking(config: JobConfig) -> Linking:
    """Model identity, index (given, or built and cached) served by shard actors, and the replica factory."""
    from kb.manifest import MANIFEST_NAME, Manifest
    from kb.serving import RayIndexClient
    from onegen.index_build import model_identity

    fingerprint, dim = model_identity(config.model)  # in a Ray task: the driver never holds the model
    directory = Path(config.index) if config.index else ensure_index(Path(config.kb) if config.kb else SAMPLE_KB,
                                                                      config.model, fingerprint)
    gpus = shard_gpus(config, len(Manifest.read(directory).shards))
    # refuses a mismatched or damaged index; shards on CPUs unless --shard-gpus: the replicas get the GPUs
    client = RayIndexClient(directory, fingerprint, expect_dim=dim, num_cpus=SHARD_CPUS, num_gpus=gpus)
    return Linking(
        # a replica given several GPUs (--gpus-per-replica > 1) spreads one model over them
        make_annotator=partial(onegen_annotator, config.model, config.batch_size, (config.gpus_per_replica or 0) > 1,
                               config.mention_bias),
        retriever=client,
        model_id=model_id(fingerprint),
        index_id=index_id((directory / MANIFEST_NAME).read_bytes()),
        popularity=popularity_prior(directory, config.popularity_weight),
    )
