"""Output side of the link job: the Parquet schema, atomic part files, resume state, the manifest.

OUT is a Parquet dataset folder (local path or any pyarrow-filesystem URI) of `part-*.parquet`
files, one row per input document (DESIGN section 4). Each part is written to a hidden
temporary name and renamed when complete, so a reader never sees half a file; Parquet
readers skip the `_`-prefixed bookkeeping files beside the parts:
`_manifest.json` (input files already processed, for `--incremental`) and `_metrics.json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.datasource import Datasink


PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
MANIFEST_FILE = "_manifest.json"
METRICS_FILE = "_metrics.json"
TOKENS_COLUMN = "_generated_tokens"  # per-row count of generated tokens; summed for the metrics, not written

CANDIDATE_TYPE = pa.struct([("entity_id", pa.string()), ("score", pa.float32())])
MENTION_TYPE = pa.struct([
    ("start", pa.int64()),  # char offset (code points) into text
    ("end", pa.int64()),  # one past the last char; text[start:end] == surface
    ("surface", pa.string()),
    ("entity_id", pa.string()),  # canonical entity id, null for NIL
    ("score", pa.float32()),  # cosine of the chosen candidate (of the best one for NIL)
    ("candidates", pa.list_(CANDIDATE_TYPE)),  # global top-k, best first
])
MENTIONS_TYPE = pa.list_(MENTION_TYPE)


@dataclass
class Output:
    """Where results go: a folder on a pyarrow filesystem."""

    filesystem: pafs.FileSystem
    path: str  # folder path inside the filesystem
    uri: str  # as the user gave it, for messages

    @classmethod
    def from_uri(cls, uri: str) -> Output:
        if "://" in uri:
            filesystem, path = pafs.FileSystem.from_uri(uri)
        else:
            filesystem, path = pafs.LocalFileSystem(), os.path.abspath(uri)
        return cls(filesystem, path.rstrip("/"), uri)

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

    def __init__(self, output: Output):
        self.output = output
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
        return stats

    def on_write_complete(self, write_result) -> None:
        totals: dict = {}
        for stats in write_result.write_returns:
            for key, value in stats.items():
                totals[key] = totals.get(key, 0) + value
        self.stats = totals


def done_rows(output: Output) -> dict[str, set[int]]:
    """source uri -> rows already in committed parts (what `--resume` skips)."""
    done: dict[str, set[int]] = {}
    for path in output.parts():
        with output.filesystem.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=["source", "source_row"])
        for source, row in zip(table.column("source").to_pylist(), table.column("source_row").to_pylist()):
            done.setdefault(source, set()).add(row)
    return done


def drop_sources(output: Output, sources: set[str]) -> int:
    """Remove the rows of `sources` from the committed parts (atomic rewrite per part); rows removed."""
    removed = 0
    for path in output.parts():
        with output.filesystem.open_input_file(path) as handle:
            table = pq.read_table(handle)
        keep = pc.invert(pc.is_in(table.column("source"), pa.array(sorted(sources), pa.string())))
        kept = table.filter(keep)
        if kept.num_rows == table.num_rows:
            continue
        removed += table.num_rows - kept.num_rows
        if kept.num_rows:
            write_table(output.filesystem, path, kept)
        else:
            output.filesystem.delete_file(path)
    return removed


@dataclass
class Manifest:
    """What OUT already holds: input files by uri with their size and content hash."""

    files: dict[str, dict] = field(default_factory=dict)  # uri -> {"size": int, "sha256": str}
    model: str | None = None  # model id the results came from
    index: str | None = None  # index manifest hash the results came from

    @classmethod
    def load(cls, output: Output) -> Manifest:
        value = output.read_json(MANIFEST_FILE)
        return cls(**value) if value else cls()

    def save(self, output: Output) -> None:
        output.write_json(MANIFEST_FILE, {"files": self.files, "model": self.model, "index": self.index})

    def changed(self, uri: str, size: int, sha256: str) -> bool:
        """True when the file is new or differs from the one processed before."""
        return self.files.get(uri) != {"size": size, "sha256": sha256}
