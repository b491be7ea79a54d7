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

from onegen.indexes import SAMPLE_KB, ensure_index, popularity_prior
from onegen.ner import NerSpans
from onegen.pipeline.job import JobConfig, Linking, index_id, model_id, replica_gpus, with_model_settings
from onegen.pipeline.stages import onegen_annotator

LOG = logging.getLogger(__name__)

SHARD_CPUS = 0.25  # CPUs reserved per index-shard actor: search is memory-bound and short


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
    """Model identity, index (given, or built and cached) served by shard actors, and the replica factory
    (decision settings left None: the model's linker_config.json)."""
    from kb.index import stored_aliases, stored_ids
    from kb.jsonl import iter_aliases
    from kb.manifest import MANIFEST_NAME, Manifest
    from kb.serving import RayIndexClient
    from onegen.index_build import model_identity
    from onegen.titles import kb_names

    config = with_model_settings(config)
    fingerprint, dim = model_identity(config.model)  # in a Ray task: the driver never holds the model
    kb_file = None if config.index else Path(config.kb) if config.kb else SAMPLE_KB  # the cached index's KB file
    directory = Path(config.index) if config.index else ensure_index(kb_file, config.model, fingerprint)
    gpus = shard_gpus(config, len(Manifest.read(directory).shards))
    # refuses a mismatched or damaged index; shards on CPUs unless --shard-gpus: the replicas get the GPUs
    client = RayIndexClient(directory, fingerprint, expect_dim=dim, num_cpus=SHARD_CPUS, num_gpus=gpus)
    spans_need_titles = (config.title_spans or config.split_spans) and config.mentions == "union"
    aliases = iter_aliases(kb_file) if kb_file is not None else stored_aliases(directory)  # as onegen.Linker reads them
    names = (kb_names(stored_ids(directory), config.redirects, aliases)
             if config.alias_weight or spans_need_titles else None)
    return Linking(
        # a replica given several GPUs (--gpus-per-replica > 1) spreads one model over them
        make_annotator=partial(onegen_annotator, config.model, config.batch_size, (config.gpus_per_replica or 0) > 1,
                               config.mention_bias, config.mentions,
                               names if spans_need_titles else None,
                               title_spans=bool(config.title_spans), split_spans=bool(config.split_spans)),
        make_span_finder=partial(NerSpans, config.ner_model, tidy=True) if config.mentions != "model" else None,
        retriever=client,
        model_id=model_id(fingerprint),
        index_id=index_id((directory / MANIFEST_NAME).read_bytes()),
        popularity=popularity_prior(directory, config.popularity_weight, kb_file),
        names=names,
    )
