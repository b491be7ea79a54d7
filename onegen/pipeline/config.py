"""The link job's options (`JobConfig`), apart from the job so that the CLI parses them without importing Ray."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class JobConfig:
    """Options of `jobs/link.py` (CLI flags of the same names)."""

    input: str  # Parquet/JSONL file, folder, glob or URI
    output: str  # output folder (local or URI)
    model: str | None = None  # model folder / hub id in the cache; None: the embedded default
    index: str | None = None  # built entity index folder; None: built from `kb` (cached)
    kb: str | None = None  # KB JSONL for an index built on first use; None with no index: samples/kb.jsonl
    num_replicas: int | None = None  # most model replicas; None: one per GPU the cluster has (grows with it), or 1 on CPUs
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs, else 0 (replicas on CPUs)
    cpus_per_replica: float = 1.0  # CPUs reserved per replica (model compute on CPU; keep small on GPU)
    shard_gpus: float = 0.0  # GPU share per index-shard actor (0: shards on CPUs); only from GPUs the replicas leave
    gpu_wait: float = 1200.0  # seconds to wait for a node with a replica's GPUs (an autoscaler adding one) before refusing
    batch_size: int = 8  # documents per model call
    # Decision settings; None: the model's linker_config.json (onegen.linker_config.model_config)
    top_k: int | None = None  # candidates kept per mention
    name_candidates: int | None = None  # entities the surface names added to the retrieved ones (onegen.linker)
    nil_threshold: float | None = None  # chosen cosine + alias and name terms below which: NIL
    given_nil_threshold: float | None = None  # the same for the NER's spans (None here and in the model's: nil_threshold)
    short_forms: bool | None = None  # link NIL short forms of linked mentions of the same document (onegen.decide)
    aliases: str | None = None  # mention<TAB>entity<TAB>count table for the alias prior
    redirects: str | None = None  # from<TAB>to table whose names count as the KB's names in the alias prior
    alias_weight: float | None = None  # weight of the alias prior (alias table and KB names; 0: off)
    alias_nil_weight: float | None = None  # its weight in the evidence NIL is decided on (unset in the model's: alias_weight)
    popularity_weight: float | None = None  # weight of the KB-popularity prior (0: off)
    name_weight: float | None = None  # evidence added when a mention's surface is a candidate's title (0: off)
    mention_bias: float | None = None  # logits added to opening a mention while decoding (0: the model's own)
    mentions: str | None = None  # what is linked: the model's own ("model"), an NER's name spans ("ner") or both ("union")
    ner_model: str | None = None  # spaCy model of the NER (--mentions ner|union)
    title_spans: bool | None = None  # --mentions union: an NER span that is a KB title replaces the model's mentions inside it
    split_spans: bool | None = None  # --mentions union: the NER spans inside a model mention that is no KB title replace it,
    # and a KB title two neighbouring mentions spell replaces them
    max_chars: int = 1_000_000  # longer documents get status=error
    resume: bool = False  # keep committed parts, write only the missing rows
    incremental: bool = False  # process only input files new or changed since the last run
    break_lock: bool = False  # remove OUT's lock first (its holder is known to be gone; see the refusal)
    ray_address: str | None = None  # None: RAY_ADDRESS if set (ray job submit), else a local Ray in-process
