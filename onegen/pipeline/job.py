"""The link job: Ray Data from input files to a Parquet dataset, one output row per input row.

    read (one task per file, validated rows)
      -> NerStage        with --mentions ner|union: actor pool of NERs on CPUs (onegen.ner)
      -> AnnotateStage   actor pool of model replicas (GPU each when there are GPUs)
      -> LinkStep        tasks: index-shard actors' top-k, then decide entity or NIL
      -> AtomicParquetSink  part files written atomically

`run_job(config)` plans what to do (fresh, `--resume`, `--incremental`), runs the pipeline
and returns a `Summary`, also written to `OUT/_metrics.json`.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs
import ray

from onegen.decide import AliasPrior, PopularityPrior
from onegen.linker_config import model_config
from onegen.pipeline.config import JobConfig
from onegen.pipeline.inputs import DocumentSource, InputSet, Limits, Scan, content_hash, resolve_input, scan_inputs
from onegen.pipeline.outputs import (MANIFEST_FILE, METRICS_FILE, AtomicParquetSink, Output, RunManifest, done_rows,
                                     drop_sources, locked, part_origins)
from onegen.pipeline.progress import LinkingProgress, stage
from onegen.ner import MENTION_SOURCES, check_ner_model
from onegen.pipeline.stages import Annotate, AnnotateStage, FindSpans, LinkStep, NerStage, Retriever
from onegen.pipeline.uris import redact_uri
from onegen.sources import check_model
from onegen.titles import SPLIT_SPANS_RULE, Titles

LOG = logging.getLogger(__name__)
# Documents per replica call = this x --batch-size. A call decodes its windows in length order, so
# larger calls pad less; 16 against 4 took the bench/link.py job from 0.73 to 0.79 of the model alone.
MODEL_BATCHES_PER_CALL = 16
NER_CPUS = 0.25  # CPUs reserved per NER actor (--mentions ner|union)
STAGES = 3  # logged as they start: input checked, model and index ready, linking (onegen.pipeline.progress)


@dataclass
class Linking:
    """The model and index side of the pipeline, built by `model_and_index.prepare_linking` (or a test)."""

    make_annotator: Callable[[], Annotate]  # picklable; called once in each replica
    retriever: Retriever  # index-shard client (or an in-process index)
    model_id: str  # written to every output row
    index_id: str  # index manifest hash, written to every output row
    popularity: PopularityPrior | None = None  # KB-popularity prior for the decision (None: off)
    names: Titles | None = None  # the KB's names, for the alias prior (None: the alias table alone)
    make_span_finder: Callable[[], FindSpans] | None = None  # picklable; the NER of --mentions ner|union, once per actor


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
    skip: dict[str, set[int]]  # uri -> rows already written by an unfinished run of the same file content
    skipped_files: int  # input files left out: all their rows are in OUT
    files: dict[str, dict]  # uri -> {"size", "sha256"}: files done before this run (the manifest's `files`)
    pending: dict[str, dict]  # uri -> {"size", "sha256"}: files this run writes (the manifest's `pending`)


def check_folder(output: Output) -> None:
    """Refuse an --output that is a file."""
    if output.filesystem.get_file_info(output.path).type == pafs.FileType.File:
        raise FileExistsError(f"--output {output.uri} is a file; expected a folder (new, or one an earlier run wrote)")


def check_output(config: JobConfig, output: Output) -> None:
    """Refuse to mix a fresh run into an OUT that already holds results."""
    parts = output.parts()
    if parts and not (config.resume or config.incremental):
        raise FileExistsError(
            f"{output.uri} already holds {len(parts)} part files of an earlier run. Pass --resume to finish "
            f"that run, --incremental to add new or changed input files, or choose an empty --output.")


def check_sources(config: JobConfig) -> None:
    """Refuse a missing --model folder, --index, --kb, --aliases or --redirects, a missing FAISS (an extra) or NER model,
    before Ray starts."""
    importlib.import_module("kb.index")  # the shard actors search with FAISS; without it: ImportError saying what to install
    check_model(config.model)

    if config.index:
        from kb.manifest import Manifest

        Manifest.read(config.index)  # a missing or unfinished index is refused with the build command
    elif config.kb:
        from onegen.indexes import require_kb

        require_kb(Path(config.kb))
    if config.aliases and not Path(config.aliases).is_file():
        raise FileNotFoundError(f"alias table {config.aliases} not found: pass --aliases FILE "
                                f"(mention<TAB>entity<TAB>count lines)")
    if config.redirects and not Path(config.redirects).is_file():
        raise FileNotFoundError(f"redirects table {config.redirects} not found: pass --redirects FILE (from<TAB>to lines)")


def without_output(inputs: InputSet, output: Output) -> InputSet:
    """The input files less those under OUT: an output folder inside the input folder is never read as input."""
    inside = [f for f in inputs.files
              if inputs.filesystem.equals(output.filesystem) and f.path.startswith(output.path + "/")]
    if not inside:
        return inputs
    LOG.info("leaving out %d input files under the output folder %s", len(inside), output.uri)
    files = [f for f in inputs.files if f not in inside]
    if not files:
        raise FileNotFoundError(f"the input holds no files outside the output folder {output.uri}; "
                                f"point --input at the documents")
    return InputSet(inputs.filesystem, files)


def input_hashes(inputs: InputSet) -> dict[str, dict]:
    """uri -> {"size", "sha256"} of every input file."""
    return {f.uri: {"size": f.size, "sha256": content_hash(inputs.filesystem, f.path)} for f in inputs.files}


DECISION_SETTINGS = ("top_k", "name_candidates", "nil_threshold", "given_nil_threshold", "short_forms", "alias_weight", "alias_nil_weight",
                     "popularity_weight", "name_weight", "mention_bias", "mentions", "ner_model", "title_spans", "split_spans")


def with_model_settings(config: JobConfig) -> JobConfig:
    """The config with each decision setting left None taken from the model's linker_config.json (read
    from the model's folder, without loading the model); a flag given wins. A --mentions that needs an NER
    whose spaCy model is not installed is refused here, before Ray starts."""
    saved = model_config(config.model)
    config = replace(config, **{name: getattr(saved, name) for name in DECISION_SETTINGS if getattr(config, name) is None})
    if config.mentions not in MENTION_SOURCES:
        raise ValueError(f"--mentions must be one of {', '.join(MENTION_SOURCES)}, got {config.mentions!r}")
    if config.mentions != "model":
        check_ner_model(config.ner_model)
    return config


def result_options(config: JobConfig) -> dict:
    """The options that change output rows, as the manifest records them (the alias and redirects tables by their
    content)."""
    aliases, redirects = (content_hash(pafs.LocalFileSystem(), os.path.abspath(path)) if path else None
                          for path in (config.aliases, config.redirects))
    return {"top_k": config.top_k, "name_candidates": config.name_candidates, "nil_threshold": config.nil_threshold, "given_nil_threshold": config.given_nil_threshold,
            "short_forms": config.short_forms, "popularity_weight": config.popularity_weight, "name_weight": config.name_weight,
            "alias_weight": config.alias_weight, "alias_nil_weight": config.alias_nil_weight, "mention_bias": config.mention_bias, "max_chars": config.max_chars,
            "aliases_sha256": aliases, "redirects_sha256": redirects, "mentions": config.mentions,
            "ner_model": config.ner_model if config.mentions != "model" else None,
            "title_spans": bool(config.title_spans) and config.mentions == "union",
            "split_spans": SPLIT_SPANS_RULE if config.split_spans and config.mentions == "union" else False}


# options added since manifests were first written, with what the runs before them did
UNRECORDED_OPTIONS = {"mentions": "model", "ner_model": None, "name_weight": 0.0, "title_spans": False,
                      "split_spans": False, "redirects_sha256": None, "name_candidates": 0,
                      "alias_nil_weight": None}


def option_changes(recorded: dict, options: dict) -> str:
    """"--top-k 10 (this run: 5), ..." for every option that differs; "" when none does."""
    recorded = UNRECORDED_OPTIONS | recorded
    return ", ".join(f"--{key.removesuffix('_sha256').replace('_', '-')} {recorded.get(key)} (this run: {value})"
                     for key, value in options.items() if recorded.get(key) != value)


def input_changes(recorded: dict[str, dict], hashes: dict[str, dict], shown: int = 3) -> str:
    """"a.jsonl changed, b.jsonl is new, ..." for the files that differ from the recorded ones; "" when none does."""
    changes = [f"{uri} changed" for uri in sorted(recorded.keys() & hashes.keys()) if recorded[uri] != hashes[uri]]
    changes += [f"{uri} is new" for uri in sorted(hashes.keys() - recorded.keys())]
    changes += [f"{uri} is not in this input" for uri in sorted(recorded.keys() - hashes.keys())]
    more = f" and {len(changes) - shown} more" if len(changes) > shown else ""
    return ", ".join(changes[:shown]) + more


def check_resumable(config: JobConfig, output: Output, manifest: RunManifest | None, hashes: dict[str, dict],
                    options: dict) -> None:
    """Refuse to continue OUT (--resume, --incremental) with other result-changing options, or (--resume)
    from other input; checks what needs no model, before Ray starts."""
    if not (config.resume or config.incremental):
        return
    if manifest is None:
        if output.parts():
            raise ValueError(f"{output.uri} holds part files but no {MANIFEST_FILE}, so what they were linked from "
                             f"cannot be checked; link into a new --output")
        return
    if changes := option_changes(manifest.options, options):
        raise ValueError(f"{output.uri} was linked with {changes}; continue it with the same options, "
                         f"or link into a new --output")
    if config.resume and (changes := input_changes(manifest.files | manifest.pending, hashes)):
        raise ValueError(f"--resume finishes a run of the same input, but {output.uri} was linked from other input "
                         f"({changes}); pass --incremental to link new or changed files into it, or use a new --output")


def check_consistent(config: JobConfig, output: Output, manifest: RunManifest | None, linking: Linking) -> None:
    """Refuse to add results of another model or index to an OUT (as its manifest and its part files say)."""
    if not (config.resume or config.incremental):
        return
    found = part_origins(output) | ({(manifest.model, manifest.index)} if manifest else set())
    others = sorted(found - {(linking.model_id, linking.index_id)})
    if others:
        model, index = others[0]
        raise ValueError(
            f"{output.uri} holds results of model {model} with index {index}; this run uses {linking.model_id} with "
            f"{linking.index_id}. Continue it with that model and index, or write to a new --output.")


def plan_run(config: JobConfig, inputs: InputSet, output: Output, manifest: RunManifest | None,
             hashes: dict[str, dict]) -> Plan:
    """Decide what to read. OUT keeps only rows the manifest vouches for: those of finished files still in
    their recorded state (or gone from the input), and those of unfinished files with unchanged content,
    which are skipped; any other rows (changed files, abandoned ones) are dropped first."""
    continuing = manifest is not None and (config.resume or config.incremental)
    finished = manifest.files if continuing else {}
    unfinished = manifest.pending if continuing else {}
    todo = [f for f in inputs.files if finished.get(f.uri) != hashes[f.uri]]
    todo_uris = {f.uri for f in todo}
    resumable = {uri for uri in todo_uris if unfinished.get(uri) == hashes[uri]}
    written = done_rows(output) if continuing else {}
    stale = written.keys() - (finished.keys() - todo_uris) - resumable
    if stale:
        LOG.info("removing %d rows of %d files changed or left unfinished since they were written",
                 drop_sources(output, stale), len(stale))
    return Plan(inputs=InputSet(inputs.filesystem, todo),
                skip={uri: rows for uri, rows in written.items() if uri in resumable},
                skipped_files=len(inputs.files) - len(todo),
                files={uri: value for uri, value in finished.items() if uri not in todo_uris},
                pending={uri: hashes[uri] for uri in sorted(todo_uris)})


class ReplicaPlacementError(ValueError):
    """No node of the cluster takes a model replica: the options ask for more than it has (the message says what to change)."""


@dataclass
class Replicas:
    """The pool of model replicas, from the config and the cluster."""

    gpus: float  # GPUs per replica (0: the replicas run on CPUs)
    initial: int  # replicas started at once: one per GPU in the cluster now; on CPUs --num-replicas or 1
    most: int | None  # the pool's maximum (--num-replicas); None: as many as the cluster's GPUs take, as an autoscaler adds them


def replica_gpus(config: JobConfig) -> float:
    """GPUs per replica: --gpus-per-replica, else 1 when the cluster has a GPU now, else 0 (replicas on CPUs)."""
    if config.gpus_per_replica is not None:
        return config.gpus_per_replica
    return 1 if ray.cluster_resources().get("GPU", 0) else 0


def replica_resources(config: JobConfig) -> Replicas:
    """How many replicas start and how far the pool may grow, on GPUs or CPUs."""
    gpus = replica_gpus(config)
    if not gpus:
        if config.gpus_per_replica is None:
            LOG.warning("the cluster has no GPU: the model replicas run on CPUs (where GPU nodes are added on demand, "
                        "as with cluster.yaml, pass --gpus-per-replica 1)")
        size = config.num_replicas or 1
        return Replicas(0, size, size)
    now = max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))
    return Replicas(gpus, min(now, config.num_replicas or now), config.num_replicas)


def wait_for_replica_node(config: JobConfig, gpus: float) -> None:
    """Return once a node can take one GPU replica; refuse after --gpu-wait seconds, so the job never waits in
    silence for GPUs that do not come. The pending placement group is what an autoscaler adds a node for."""
    bundle = {"GPU": gpus, "CPU": config.cpus_per_replica}
    if ray.available_resources().get("GPU", 0) < gpus:
        LOG.warning("no free GPU for a model replica (%g GPUs per replica): waiting up to %g s for one (--gpu-wait)",
                    gpus, config.gpu_wait)
    group = ray.util.placement_group([{key: value for key, value in bundle.items() if value}])
    try:
        ray.get(group.ready(), timeout=config.gpu_wait)
    except ray.exceptions.GetTimeoutError:
        raise ReplicaPlacementError(
            f"no node offered {gpus:g} GPU and {config.cpus_per_replica:g} CPU for a model replica within {config.gpu_wait:g} s "
            f"(the cluster has {ray.cluster_resources().get('GPU', 0):g} GPUs, {ray.available_resources().get('GPU', 0):g} free). "
            "Add GPU nodes (cluster.yaml's gpu_worker), lower --gpus-per-replica or --cpus-per-replica, "
            "or pass --gpus-per-replica 0 to run the replicas on CPUs.") from None
    finally:
        ray.util.remove_placement_group(group)


def build_dataset(config: JobConfig, plan: Plan, linking: Linking, scan: Scan) -> ray.data.Dataset:
    """The pipeline, lazily: read -> [NER (actor pool, --mentions ner|union)] -> annotate (actor pool) -> link (tasks)."""
    replicas = replica_resources(config)
    if replicas.gpus:
        wait_for_replica_node(config, replicas.gpus)
    alias_prior = AliasPrior.load(config.aliases, linking.names, weight=config.alias_weight, nil_weight=config.alias_nil_weight)
    source = DocumentSource(plan.inputs, Limits(config.max_chars), scan, plan.skip)
    # Reads are light (parse + validate): half a CPU each, so they never starve the replicas.
    dataset = ray.data.read_datasource(source, num_cpus=0.5)
    if linking.make_span_finder is not None:
        # spaCy on CPUs, one actor per replica at most: a small NER keeps pace with a replica's decoding. A quarter
        # CPU reserved (spaCy runs one thread, mostly waiting on the replicas): on a 2-CPU machine an index shard
        # (0.25), a CPU replica (1) and the NER leave the half CPU a read needs; with 0.5 the job would stall.
        dataset = dataset.map_batches(NerStage, fn_constructor_args=(linking.make_span_finder,), batch_format="pyarrow",
                                      batch_size=config.batch_size * MODEL_BATCHES_PER_CALL, num_cpus=NER_CPUS,
                                      compute=ray.data.ActorPoolStrategy(min_size=1, max_size=replicas.most))
    dataset = dataset.map_batches(
        AnnotateStage,
        fn_constructor_args=(linking.make_annotator,),
        batch_format="pyarrow",
        # A replica call takes several model batches' worth of documents and decodes them in length
        # order (onegen.inference sorts its windows), so that rows of one model batch pad little.
        batch_size=config.batch_size * MODEL_BATCHES_PER_CALL,
        # One model replica per actor; Ray restarts a dead replica and retries its batch. The pool starts with
        # one replica per GPU present and grows up to --num-replicas as an autoscaler adds GPU nodes.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=replicas.most, initial_size=replicas.initial),
        num_gpus=replicas.gpus,  # GPUs per replica (--gpus-per-replica; 1 when the cluster has GPUs, else 0)
        num_cpus=config.cpus_per_replica,  # small on GPU nodes so reads are not starved
    )
    linker = LinkStep(linking.retriever, config.top_k, config.nil_threshold, linking.model_id, linking.index_id,
                      alias_prior, linking.popularity, config.given_nil_threshold, config.short_forms, config.name_weight,
                      config.name_candidates)
    # Retrieval is remote calls to the index-shard actors plus numpy: a quarter CPU per task.
    return dataset.map_batches(linker, batch_format="pyarrow", num_cpus=0.25)


def run_job(config: JobConfig, linking: Linking | None = None) -> Summary:
    """Run the link job; `linking` defaults to the real model + index (`model_and_index.prepare_linking`).

    What needs no model is checked before Ray starts: the input, the output folder, its lock and
    manifest, the index or KB. The manifest is written (incomplete) before the first part and
    completed after the last.
    """
    started, clock, run_id = datetime.now(timezone.utc), time.perf_counter(), uuid.uuid4().hex[:12]
    output = Output.from_uri(config.output)
    check_folder(output)
    inputs = without_output(resolve_input(config.input), output)
    check_sources(config)
    config = with_model_settings(config)
    with locked(output, run_id, config.break_lock):
        check_output(config, output)
        manifest = RunManifest.load(output)
        hashes, options = input_hashes(inputs), result_options(config)
        check_resumable(config, output, manifest, hashes, options)
        stage(1, STAGES, "input %s: %d files; output %s", redact_uri(config.input), len(inputs.files), output.uri)
        if not ray.is_initialized():
            # address None: RAY_ADDRESS (set by ray job submit) or a local Ray; Ray's driver logs at this process's level
            ray.init(address=config.ray_address, logging_level=logging.getLogger().getEffectiveLevel())
        own_linking = linking is None
        if own_linking:
            from onegen.pipeline.model_and_index import prepare_linking

            linking = prepare_linking(config)
        stage(2, STAGES, "model %s and index %s ready after %.0f s", linking.model_id, linking.index_id,
              time.perf_counter() - clock)
        sink = AtomicParquetSink(output)
        try:
            check_consistent(config, output, manifest, linking)
            plan = plan_run(config, inputs, output, manifest, hashes)
            record = RunManifest(run_id, False, linking.model_id, linking.index_id, options, redact_uri(config.input), plan.files, plan.pending)
            record.save(output)  # before the first part: a run stopped from here on is known to be unfinished
            if plan.inputs.files:
                with LinkingProgress(f"[3/{STAGES}] linking") as progress:  # before the dataset takes Ray Data's settings
                    dataset = build_dataset(config, plan, linking, scan_inputs(inputs, Limits(config.max_chars)))
                    sink.progress = progress.counter
                    # Writes only rename finished files: a quarter CPU per task.
                    dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
            else:
                LOG.info("nothing to do: %s already holds every row of this input", output.uri)
        finally:
            if own_linking:
                linking.retriever.close()  # stop the index-shard actors
        record.finish()
        record.save(output)
        summary = summarize(run_id, started, time.perf_counter() - clock, sink.stats, plan, linking, output)
        output.write_json(METRICS_FILE, asdict(summary))
    return summary


def summarize(run_id: str, started: datetime, wall: float, stats: dict, plan: Plan, linking: Linking,
              output: Output) -> Summary:
    """The Summary of a finished run from the sink's counts."""
    stats = {key: stats.get(key, 0) for key in ("documents", "errors", "mentions", "linked", "characters", "generated_tokens")}
    return Summary(
        run_id=run_id, started_at=started.isoformat(timespec="seconds"), wall_seconds=round(wall, 3),
        **stats, docs_per_second=round(stats["documents"] / wall, 3), tokens_per_second=round(stats["generated_tokens"] / wall, 3),
        input_files=[f.uri for f in plan.inputs.files], skipped_files=plan.skipped_files,
        resumed_rows=sum(len(rows) for rows in plan.skip.values()),
        model=linking.model_id, index=linking.index_id, output=output.uri,
    )


def index_id(manifest_bytes: bytes) -> str:
    """Short hash naming an index by its manifest."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()[:16]


def model_id(fingerprint: dict) -> str:
    """Short name of a model fingerprint: name@weights-hash."""
    return f"{fingerprint['model']}@sha256:{fingerprint['weights_sha256'][:16]}"

