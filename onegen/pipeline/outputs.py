"""Output side of the link job: the Parquet schema, atomic part files, resume state, the manifest.

OUT is a Parquet dataset folder (local path or any pyarrow-filesystem URI) of `part-*.parquet`
files, one row per input document (DESIGN section 4). Each part is written to a hidden
temporary name and renamed when complete, so a reader never sees half a file; Parquet
readers skip the `_`-prefixed bookkeeping files beside the parts: `_manifest.json` (what OUT
holds: model, index, result-changing options, input files done and in progress), `_lock.json`
(the run writing to OUT now) and `_metrics.json`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.datasource import Datasink

from onegen.pipeline.uris import open_location, redact_uri
from onegen.spans import Mention


PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
MANIFEST_FILE = "_manifest.json"
MANIFEST_VERSION = 3  # layout of OUT; 2 (parts whose mentions have no `source`) and 1 (a manifest written at the end) are refused
LOCK_FILE = "_lock.json"
METRICS_FILE = "_metrics.json"
TOKENS_COLUMN = "_generated_tokens"  # per-row count of generated tokens; summed for the metrics, not written

# The Arrow form of onegen.spans.Mention, field for field (Mention.to_row writes its rows):
CANDIDATE_TYPE = pa.struct([("entity_id", pa.string()), ("score", pa.float32())])
_MENTION_FIELD_TYPES = {
    "start": pa.int64(),  # char offset (code points) into text
    "end": pa.int64(),  # one past the last char; text[start:end] == surface
    "surface": pa.string(),
    "entity_id": pa.string(),  # canonical entity id, null for NIL
    "score": pa.float32(),  # cosine of the chosen candidate (of the best one for NIL)
    "candidates": pa.list_(CANDIDATE_TYPE),  # global top-k, best first
    "source": pa.string(),  # who marked the span: "model" (decoded) or "ner" (the NER stage's, teacher-forced)
}
MENTION_TYPE = pa.struct([(f.name, _MENTION_FIELD_TYPES[f.name]) for f in fields(Mention)])
MENTIONS_TYPE = pa.list_(MENTION_TYPE)
LOG = logging.getLogger(__name__)


@dataclass
class Output:
    """Where results go: a folder on a pyarrow filesystem."""

    filesystem: pafs.FileSystem
    path: str  # folder path inside the filesystem
    uri: str  # as the user gave it less credentials (uris.redact_uri), for messages and metrics

    @classmethod
    def from_uri(cls, uri: str) -> Output:
        filesystem, path = open_location(uri)
        return cls(filesystem, path.rstrip("/"), redact_uri(uri))

    def join(self, name: str) -> str:
        return f"{self.path}/{name}"

    def parts(self) -> list[str]:
        """Paths of the committed part files, sorted."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(i.path for i in self.filesystem.get_file_info(selector)
                      if i.type == pafs.FileType.File and i.base_name.startswith(PART_PREFIX)
                      and i.base_name.endswith(PART_SUFFIX))

    def read_json(self, name: str) -> dict | None:
        if self.filesystem.get_file_info(self.join(name)).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(self.join(name)) as stream:
            return json.loads(stream.read().decode("utf-8"))

    def write_json(self, name: str, value: dict) -> None:
        """Write a JSON file atomically (temporary name, then rename)."""
        data = json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
        atomic_write(self.filesystem, self.join(name), lambda stream: stream.write(data))


def atomic_write(filesystem: pafs.FileSystem, path: str, write) -> None:
    """Call `write(stream)` on a hidden temporary file beside `path`, then rename it to `path`."""
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.tmp-{uuid.uuid4().hex}-{name}"
    filesystem.create_dir(folder, recursive=True)
    try:
        with filesystem.open_output_stream(temporary) as stream:
            write(stream)
        filesystem.move(temporary, path)
    except BaseException:
        try:
            filesystem.delete_file(temporary)
        except OSError:
            pass
        raise


def write_table(filesystem: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write one Parquet file atomically."""
    atomic_write(filesystem, path, lambda stream: pq.write_table(table, stream))


def part_name(table: pa.Table) -> str:
    """A part file name fixed by the rows it holds, so a retried write task replaces, not duplicates."""
    digest = hashlib.sha256()
    for source, row in zip(table.column("source").to_pylist(), table.column("source_row").to_pylist()):
        digest.update(f"{source}\0{row}\n".encode("utf-8", "surrogatepass"))
    return f"{PART_PREFIX}{digest.hexdigest()[:24]}{PART_SUFFIX}"


def block_stats(table: pa.Table) -> dict:
    """Counts the summary needs from one output block."""
    statuses = table.column("status")
    return {
        "documents": table.num_rows,
        "errors": pc.sum(pc.equal(statuses, "error")).as_py() or 0,
        "mentions": pc.sum(pc.list_value_length(table.column("mentions"))).as_py() or 0,
        "linked": _linked(table),
        "characters": pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0,
        "generated_tokens": (pc.sum(table.column(TOKENS_COLUMN)).as_py() or 0) if TOKENS_COLUMN in table.column_names else 0,
    }


def _linked(table: pa.Table) -> int:
    entity_ids = pc.struct_field(pc.list_flatten(table.column("mentions")), "entity_id")
    return len(entity_ids) - entity_ids.null_count


class AtomicParquetSink(Datasink):
    """Ray Data sink: each write task writes its rows to one part file, atomically; returns counts."""

    def __init__(self, output: Output, progress=None):
        self.output = output
        self.progress = progress  # onegen.pipeline.progress.ProgressCounter actor told each part's counts, or None
        self.stats: dict = {}  # summed block_stats of the whole run, filled by on_write_complete

    def write(self, blocks: Iterable, ctx) -> dict:
        tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {}
        table = pa.concat_tables(tables, promote_options="permissive")
        stats = block_stats(table)
        if TOKENS_COLUMN in table.column_names:
            table = table.drop_columns([TOKENS_COLUMN])
        write_table(self.output.filesystem, self.output.join(part_name(table)), table)
        if self.progress is not None:
            self.progress.add.remote(stats)
        return stats

    def on_write_complete(self, write_result) -> None:
        totals: dict = {}
        for stats in write_result.write_returns:
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
        self.stats = totals


def _part_columns(output: Output, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """(path, table of `columns`) of every committed part; reads only those columns."""
    for path in output.parts():
        with output.filesystem.open_input_file(path) as handle:
            yield path, pq.read_table(handle, columns=columns)


def done_rows(output: Output) -> dict[str, set[int]]:
    """source uri -> rows already in committed parts (what `--resume` skips)."""
    done: dict[str, set[int]] = {}
    for _, table in _part_columns(output, ["source", "source_row"]):
        for source, row in zip(table.column("source").to_pylist(), table.column("source_row").to_pylist()):
            done.setdefault(source, set()).add(row)
    return done


def part_origins(output: Output) -> set[tuple[str, str]]:
    """(model, index) pairs of the rows in committed parts."""
    origins: set[tuple[str, str]] = set()
    for _, table in _part_columns(output, ["model", "index"]):
        pairs = table.group_by(["model", "index"]).aggregate([])
        origins.update(zip(pairs.column("model").to_pylist(), pairs.column("index").to_pylist()))
    return origins


def drop_sources(output: Output, sources: set[str]) -> int:
    """Remove the rows of `sources` from the committed parts (atomic rewrite per part); rows removed."""
    removed, drop = 0, pa.array(sorted(sources), pa.string())
    for path, table in _part_columns(output, ["source"]):
        if not pc.any(pc.is_in(table.column("source"), drop)).as_py():
            continue  # only parts holding such rows are read whole
        with output.filesystem.open_input_file(path) as handle:
            table = pq.read_table(handle)
        kept = table.filter(pc.invert(pc.is_in(table.column("source"), drop)))
        removed += table.num_rows - kept.num_rows
        if kept.num_rows:
            write_table(output.filesystem, path, kept)
        else:
            output.filesystem.delete_file(path)
    return removed


class RunManifestError(ValueError):
    """`_manifest.json` is not one this job wrote (corrupt, foreign, or of another version)."""


@dataclass
class RunManifest:
    """`_manifest.json`: what OUT holds, written at the start of a run (incomplete) and at its end.

    A run first records the files it is about to write as `pending` with `complete` false, and
    moves them to `files` when its last part is committed; so a killed run leaves a manifest that
    says which files may have only some of their rows in OUT (`--resume` and `--incremental`
    finish exactly those).
    """

    run_id: str  # the run that wrote this manifest last
    complete: bool  # False from the start of a run until its last part is committed
    model: str  # model id of every row in OUT
    index: str  # index id (index manifest hash) of every row in OUT
    options: dict  # the options that change results (job.result_options); later runs must match them
    input: str  # --input of the last run, as given (runs compare files, not this spelling)
    files: dict[str, dict] = field(default_factory=dict)  # uri -> {"size", "sha256"}: every row is in OUT
    pending: dict[str, dict] = field(default_factory=dict)  # uri -> {"size", "sha256"}: the run writing them may have stopped
    version: int = MANIFEST_VERSION  # layout of this file

    @classmethod
    def load(cls, output: Output) -> RunManifest | None:
        """The manifest of OUT, None when there is none; a RunManifestError when it is not one this job wrote."""
        try:
            value = output.read_json(MANIFEST_FILE)
        except ValueError as err:  # not UTF-8 or not JSON
            raise RunManifestError(cls._refusal(output, f"it is not JSON ({err})")) from None
        if value is None:
            return None
        if problem := cls._shape_problem(value):
            raise RunManifestError(cls._refusal(output, problem))
        return cls(**value)

    @classmethod
    def _shape_problem(cls, value) -> str | None:
        """What is wrong with the shape of a parsed manifest, or None."""
        if not isinstance(value, dict):
            return f"expected a JSON object, got {type(value).__name__}"
        expected = {f.name for f in fields(cls)}
        if value.keys() != expected:
            unknown, missing = sorted(value.keys() - expected), sorted(expected - value.keys())
            return ", ".join(f"{what} keys {keys}" for what, keys in (("unknown", unknown), ("missing", missing)) if keys)
        if value["version"] != MANIFEST_VERSION:
            return f"layout version {value['version']!r}, this code reads version {MANIFEST_VERSION}"
        for key in ("files", "pending"):
            if not isinstance(value[key], dict) or any(
                    not isinstance(v, dict) or v.keys() != {"size", "sha256"} for v in value[key].values()):
                return f"{key!r} must map file uris to {{'size', 'sha256'}}"
        return None

    @staticmethod
    def _refusal(output: Output, problem: str) -> str:
        path = f"{output.uri.rstrip('/')}/{MANIFEST_FILE}"
        return (f"{path} is not a link-job manifest this code can read: {problem}. Link into a new --output, or "
                f"delete {path} and the part files beside it to start over")

    def save(self, output: Output) -> None:
        output.write_json(MANIFEST_FILE, asdict(self))

    def finish(self) -> None:
        """Mark the pending files written and the run complete."""
        self.files.update(self.pending)
        self.pending, self.complete = {}, True


class OutputLockedError(FileExistsError):
    """Another run holds OUT's lock."""


@dataclass
class RunLock:
    """`_lock.json`: the run writing to OUT, taken atomically at its start and removed at its end."""

    run_id: str  # the run holding OUT
    host: str  # host name of its driver
    pid: int  # process id of its driver
    started_at: str  # ISO-8601 UTC
    machine: str  # kernel boot id and pid namespace of the driver ("" if unknown): where `pid` names it

    @classmethod
    def for_this_process(cls, run_id: str) -> RunLock:
        return cls(run_id, socket.gethostname(), os.getpid(),
                   datetime.now(timezone.utc).isoformat(timespec="seconds"), this_machine())

    def gone(self) -> bool:
        """True only when the holder ran on this machine (same boot, same pid namespace) and its process is gone."""
        if not self.machine or self.machine != this_machine():
            return False
        try:
            os.kill(self.pid, 0)  # signal 0: only checks that the process exists
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, owned by another user
            pass
        return False

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, since {self.started_at})"


def this_machine() -> str:
    """Boot id and pid namespace of this process: two processes that share them share pids; "" off Linux."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def read_lock(output: Output) -> RunLock | None:
    """The lock on OUT, None when there is none; a holder named "unreadable" for a damaged lock file."""
    try:
        value = output.read_json(LOCK_FILE)
        return None if value is None else RunLock(**value)
    except (ValueError, TypeError):  # a damaged file: its holder cannot be known
        return RunLock("unreadable", "?", -1, "?", "")


def acquire_lock(output: Output, lock: RunLock, break_lock: bool = False) -> None:
    """Take OUT's lock for `lock`'s run, or raise OutputLockedError naming the holder and the way out.

    A lock whose holder is gone from this machine (a killed driver) is taken over with a warning;
    `break_lock` removes any lock first (for a holder known to be dead on another host). Two runs
    taking over the same dead holder's lock in the same instant could both succeed: the takeover
    is a read, then a delete.
    """
    holder = read_lock(output)
    if holder and (break_lock or holder.gone()):
        LOG.warning("removing the lock of %s on %s: %s", holder.describe(), output.uri,
                    "--break-lock" if break_lock else "its process is gone from this machine")
        output.filesystem.delete_file(output.join(LOCK_FILE))
    if not _create_exclusive(output, lock):
        holder = read_lock(output)
        path = f"{output.uri.rstrip('/')}/{LOCK_FILE}"
        raise OutputLockedError(
            f"{path}: {holder.describe() if holder else 'another run'} is writing to this output. Wait for it to "
            f"finish; if it is no longer running, rerun with --break-lock (or delete {path})")


def _create_exclusive(output: Output, lock: RunLock) -> bool:
    """Write the lock file unless one exists; False when another run has it."""
    data = json.dumps(asdict(lock), indent=2).encode("utf-8")
    path = output.join(LOCK_FILE)
    output.filesystem.create_dir(output.path, recursive=True)
    if isinstance(output.filesystem, pafs.LocalFileSystem):
        # write a private file, then link it to the lock's name: link() fails when the name exists,
        # so exactly one run gets the lock, and it never holds a half-written file
        private = f"{output.path}/.tmp-{uuid.uuid4().hex}-{LOCK_FILE}"
        with open(private, "wb") as stream:
            stream.write(data)
        try:
            os.link(private, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(private)
        return True
    # Object stores offer no create-if-absent through pyarrow: check, write, read back. Two runs
    # starting within the same moment may both pass the check; the read-back catches most of them.
    if output.filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    output.write_json(LOCK_FILE, asdict(lock))
    holder = read_lock(output)
    return holder is not None and holder.run_id == lock.run_id


def release_lock(output: Output, lock: RunLock) -> None:
    """Remove OUT's lock if `lock`'s run still holds it."""
    holder = read_lock(output)
    if holder and holder.run_id == lock.run_id:
        output.filesystem.delete_file(output.join(LOCK_FILE))


@contextmanager
def locked(output: Output, run_id: str, break_lock: bool = False) -> Iterator[RunLock]:
    """Hold OUT's lock for the duration of a run (released on error too)."""
    lock = RunLock.for_this_process(run_id)
    acquire_lock(output, lock, break_lock)
    try:
        yield lock
    finally:
        release_lock(output, lock)
