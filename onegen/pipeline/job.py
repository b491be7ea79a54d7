"""The link job: Ray Data from input files to a Parquet dataset, one output row per input row.

    read (one task per file, validated rows)
      -> AnnotateStage   actor pool of model replicas (GPU each when there are GPUs)
      -> Linker          tasks: index-shard actors' top-k, then decide entity or NIL
      -> AtomicParquetSink  part files written atomically

`run_job(config)` plans what to do (fresh, `--resume`, `--incremental`), runs the pipeline
and returns a `Summary`, also written to `OUT/_metrics.json`.
"""
from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import ray

from onegen.decide import DEFAULT_NIL_THRESHOLD, DEFAULT_POPULARITY_WEIGHT, AliasPrior, PopularityPrior
from onegen.default_model import DEFAULT_MENTION_BIAS
from onegen.pipeline.inputs import DocumentSource, InputSet, Limits, Scan, content_hash, resolve_input, scan_inputs
from onegen.pipeline.outputs import METRICS_FILE, AtomicParquetSink, Manifest, Output, done_rows, drop_sources
from onegen.pipeline.stages import Annotate, AnnotateStage, Linker, Retriever

LOG = logging.getLogger(__name__)
# Documents per replica call = this x --batch-size. A call decodes its windows in length order, so
# larger calls pad less; 16 against 4 took the bench/link.py job from 0.73 to 0.79 of the model alone.
MODEL_BATCHES_PER_CALL = 16


@dataclass
class JobConfig:
    """Options of `jobs/link.py` (CLI flags of the same names)."""

    input: str  # Parquet/JSONL file, folder, glob or URI
    output: str  # output folder (local or URI)
    model: str | None = None  # model folder / hub id in the cache; None: the embedded default
    index: str | None = None  # built entity index folder; None: built from `kb` (cached)
    kb: str | None = None  # KB JSONL for an index built on first use; None with no index: samples/kb.jsonl
    num_replicas: int | None = None  # model replicas; None: one per GPU, or 1 without GPUs
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_replica: float = 1.0  # CPUs reserved per replica (model compute on CPU; keep small on GPU)
    batch_size: int = 8  # documents per model call
    top_k: int = 10  # candidates kept per mention
    nil_threshold: float = DEFAULT_NIL_THRESHOLD  # cosine below which a mention is NIL
    aliases: str | None = None  # mention<TAB>entity<TAB>count table for the alias prior
    popularity_weight: float = DEFAULT_POPULARITY_WEIGHT  # weight of the KB-popularity prior (0: off)
    mention_bias: float = DEFAULT_MENTION_BIAS  # logits added to opening a mention while decoding (0: the model's own)
    max_chars: int = 1_000_000  # longer documents get status=error
    resume: bool = False  # keep committed parts, write only the missing rows
    incremental: bool = False  # process only input files new or changed since the last run
    ray_address: str | None = None  # None: RAY_ADDRESS if set (ray job submit), else a local Ray in-process


@dataclass
class Linking:
    """The model and index side of the pipeline, built by `linking.prepare_linking` (or a test)."""

    make_annotator: Callable[[], Annotate]  # picklable; called once in each replica
    retriever: Retriever  # index-shard client (or an in-process index)
    model_id: str  # written to every output row
    index_id: str  # index manifest hash, written to every output row
    popularity: PopularityPrior | None = None  # KB-popularity prior for the decision (None: off)


@dataclass
class Summary:
    """What the run did (printed at the end, saved as OUT/_metrics.json)."""

    run_id: str
    started_at: str  # ISO-8601 UTC
    wall_seconds: float
    documents: int  # output rows written by this run
    errors: int  # rows with status=error
    mentions: int
    linked: int  # mentions with an entity (not NIL)
    characters: int  # characters of the linked texts
    generated_tokens: int  # tokens the model generated
    docs_per_second: float
    tokens_per_second: float
    input_files: list[str] = field(default_factory=list)  # files this run read
    skipped_files: int = 0  # unchanged files skipped by --incremental
    resumed_rows: int = 0  # rows already written by an earlier, interrupted run
    model: str = ""
    index: str = ""
    output: str = ""

    def text(self) -> str:
        return (f"linked {self.documents} documents ({self.errors} errors), {self.mentions} mentions "
                f"({self.linked} linked) in {self.wall_seconds:.1f} s: {self.docs_per_second:.2f} docs/s, "
                f"{self.tokens_per_second:.1f} tokens/s -> {self.output}")


@dataclass
class Plan:
    """What this run reads, given the state of OUT."""

    inputs: InputSet  # files to read
    hashes: dict[str, dict]  # uri -> {"size", "sha256"} of every input file (for the manifest)
    skip: dict[str, set[int]]  # uri -> rows already written (resume)
    skipped_files: int  # unchanged files left out (incremental)


def check_output(config: JobConfig, output: Output) -> None:
    """Refuse to mix a fresh run into an OUT that already holds results."""
    parts = output.parts()
    if parts and not (config.resume or config.incremental):
        raise FileExistsError(
            f"{output.uri} already holds {len(parts)} part files of an earlier run. Pass --resume to finish "
            f"that run, --incremental to add new or changed input files, or choose an empty --output.")


def check_consistent(output: Output, manifest: Manifest, linking: Linking) -> None:
    """Refuse to add results of another model or index to an OUT."""
    if manifest.model not in (None, linking.model_id) or manifest.index not in (None, linking.index_id):
        raise ValueError(
            f"{output.uri} holds results of model {manifest.model} with index {manifest.index}; this run uses "
            f"{linking.model_id} with {linking.index_id}. Write to a new --output to keep results consistent.")


def plan_run(config: JobConfig, inputs: InputSet, output: Output, manifest: Manifest) -> Plan:
    """Decide what to read (incremental: drops the old rows of changed files from OUT first)."""
    hashes = {f.uri: {"size": f.size, "sha256": content_hash(inputs.filesystem, f.path)} for f in inputs.files}
    files, skipped = inputs.files, 0
    if config.incremental:
        files = [f for f in inputs.files if manifest.changed(f.uri, **hashes[f.uri])]
        skipped = len(inputs.files) - len(files)
        stale = {f.uri for f in files if f.uri in manifest.files}
        if stale:
            LOG.info("removing %d rows of %d changed files", drop_sources(output, stale), len(stale))
    skip = done_rows(output) if (config.resume or config.incremental) else {}
    return Plan(InputSet(inputs.filesystem, files), hashes, skip, skipped)


def replica_resources(config: JobConfig) -> tuple[int, float]:
    """(replicas, GPUs per replica) from the config and the cluster."""
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = config.gpus_per_replica if config.gpus_per_replica is not None else (1 if cluster_gpus else 0)
    replicas = config.num_replicas or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
    return replicas, gpus


def build_dataset(config: JobConfig, plan: Plan, linking: Linking, scan: Scan) -> ray.data.Dataset:
    """The pipeline, lazily: read -> annotate (actor pool) -> link (tasks)."""
    replicas, gpus = replica_resources(config)
    alias_prior = AliasPrior.from_tsv(config.aliases) if config.aliases else None
    source = DocumentSource(plan.inputs, Limits(config.max_chars), scan, plan.skip)
    # Reads are light (parse + validate): half a CPU each, so they never starve the replicas.
    dataset = ray.data.read_datasource(source, num_cpus=0.5)
    dataset = dataset.map_batches(
        AnnotateStage,
        fn_constructor_args=(linking.make_annotator,),
        batch_format="pyarrow",
        # A replica call takes several model batches' worth of documents and decodes them in length
        # order (onegen.inference sorts its windows), so that rows of one model batch pad little.
        batch_size=config.batch_size * MODEL_BATCHES_PER_CALL,
        # One model replica per actor; Ray restarts a dead replica and retries its batch.
        compute=ray.data.ActorPoolStrategy(size=replicas),
        num_gpus=gpus,  # GPUs per replica (--gpus-per-replica; 1 when the cluster has GPUs)
        num_cpus=config.cpus_per_replica,  # small on GPU nodes so reads are not starved
    )
    linker = Linker(linking.retriever, config.top_k, config.nil_threshold, linking.model_id, linking.index_id,
                    alias_prior, linking.popularity)
    # Retrieval is remote calls to the index-shard actors plus numpy: a quarter CPU per task.
    return dataset.map_batches(linker, batch_format="pyarrow", num_cpus=0.25)


def run_job(config: JobConfig, linking: Linking | None = None) -> Summary:
    """Run the link job; `linking` defaults to the real model + index (`linking.prepare_linking`)."""
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=config.ray_address)  # None: RAY_ADDRESS (set by ray job submit) or a local Ray
    inputs = resolve_input(config.input)
    output = Output.from_uri(config.output)
    check_output(config, output)
    manifest = Manifest.load(output)
    own_linking = linking is None
    if own_linking:
        from onegen.pipeline.linking import prepare_linking

        linking = prepare_linking(config)
    sink = AtomicParquetSink(output)
    try:
        check_consistent(output, manifest, linking)
        plan = plan_run(config, inputs, output, manifest)
        if plan.inputs.files:
            dataset = build_dataset(config, plan, linking, scan_inputs(inputs))
            # Writes only rename finished files: a quarter CPU per task.
            dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    finally:
        if own_linking:
            linking.retriever.close()  # stop the index-shard actors
    resumed = sum(len(rows) for rows in plan.skip.values())
    manifest.files.update({uri: plan.hashes[uri] for uri in (f.uri for f in plan.inputs.files)})
    manifest.model, manifest.index = linking.model_id, linking.index_id
    manifest.save(output)
    wall = time.perf_counter() - clock
    stats = {key: sink.stats.get(key, 0) for key in ("documents", "errors", "mentions", "linked", "characters", "generated_tokens")}
    summary = Summary(
        run_id=uuid.uuid4().hex[:12], started_at=started.isoformat(timespec="seconds"), wall_seconds=round(wall, 3),
        **stats, docs_per_second=round(stats["documents"] / wall, 3), tokens_per_second=round(stats["generated_tokens"] / wall, 3),
        input_files=[f.uri for f in plan.inputs.files], skipped_files=plan.skipped_files, resumed_rows=resumed,
        model=linking.model_id, index=linking.index_id, output=output.uri,
    )
    output.write_json(METRICS_FILE, asdict(summary))
    return summary


def index_id(manifest_bytes: bytes) -> str:
    """Short hash naming an index by its manifest."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()[:16]


def model_id(fingerprint: dict) -> str:
    """Short name of a model fingerprint: name@weights-hash."""
    return f"{fingerprint['model']}@sha256:{fingerprint['weights_sha256'][:16]}"

