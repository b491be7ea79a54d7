"""Input side of the link job: resolve IN to files, read them as validated document rows.

IN is a Parquet or JSONL file, a folder, a glob, or any URI pyarrow's filesystems read
(`s3://`, `gs://`, `hdfs://`, `file://`). Every input row becomes exactly one row here:
a bad document (null, not a string, empty, over `max_chars`, invalid Unicode, duplicate
`doc_id`) keeps its place with `status = "error"` and a message, so nothing is lost.
Rows are identified by (`source`, `source_row`): the file and the line (JSONL, 1-based)
or row (Parquet, 0-based) they came from; resume and incremental runs key on that.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask


PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
GLOB_CHARS = "*?["
ID_COLUMN, TEXT_COLUMN = "doc_id", "text"
# Columns the job itself writes; an input column with one of these names is carried as "input_<name>".
RESERVED_COLUMNS = frozenset({"mentions", "status", "error", "source", "source_row", "model", "index"})
OK, ERROR = "ok", "error"


@dataclass(frozen=True)
class InputFile:
    """One input file."""

    uri: str  # how the user and the manifests name it: absolute local path or scheme://path
    path: str  # the path inside `filesystem` (no scheme)
    size: int  # bytes
    format: str  # "parquet" or "jsonl"


@dataclass
class InputSet:
    """The files IN resolved to, sorted by uri, with the filesystem that reads them."""

    filesystem: pafs.FileSystem
    files: list[InputFile]


@dataclass(frozen=True)
class Limits:
    """What a document may be."""

    max_chars: int = 1_000_000  # longer texts get status=error (--max-chars)


def file_format(path: str) -> str | None:
    """'parquet', 'jsonl' or None from a file name."""
    name = path.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def _hidden(path: str) -> bool:
    return any(part.startswith((".", "_")) for part in path.split("/") if part)


def _glob_match(path: str, pattern: str) -> bool:
    """Shell-style match; `*` stays within one folder level unless the pattern has `**`."""
    same_depth = "**" in pattern or path.count("/") == pattern.count("/")
    return same_depth and fnmatch.fnmatchcase(path, pattern)


def resolve_input(spec: str) -> InputSet:
    """Resolve IN (file, folder, glob or URI) to the Parquet/JSONL files it names."""
    if "://" in spec:
        filesystem, path = pafs.FileSystem.from_uri(spec)
        scheme = spec.split("://", 1)[0]
        to_uri = (lambda p: p) if scheme == "file" else (lambda p: f"{scheme}://{p}")
    else:
        filesystem, path = pafs.LocalFileSystem(), os.path.abspath(spec)
        to_uri = lambda p: p  # noqa: E731 - local paths are their own uri
    if any(ch in path for ch in GLOB_CHARS):
        base = path[: min(path.index(ch) for ch in GLOB_CHARS if ch in path)].rsplit("/", 1)[0] or "/"
        infos = [i for i in filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
                 if i.type == pafs.FileType.File and _glob_match(i.path, path) and not _hidden(i.path[len(base):])]
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input {spec!r} not found: expected a Parquet or JSONL file, a folder, a glob or a URI")
        if info.type == pafs.FileType.Directory:
            infos = [i for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File and not _hidden(i.path[len(path):])]
        else:
            if file_format(path) is None:
                raise ValueError(f"input {spec!r}: unknown file type; expected a name ending in "
                                 f"{', '.join(PARQUET_SUFFIXES + JSONL_SUFFIXES)}")
            infos = [info]
    files = sorted((InputFile(to_uri(i.path), i.path, i.size, file_format(i.path)) for i in infos if file_format(i.path)),
                   key=lambda f: f.uri)
    if not files:
        raise FileNotFoundError(f"input {spec!r} holds no Parquet (.parquet) or JSONL (.jsonl, .ndjson, .json) files")
    return InputSet(filesystem, files)


def content_hash(filesystem: pafs.FileSystem, path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_parquet_schema(schema: pa.Schema, uri: str) -> None:
    """Raise a ValueError naming the column when `doc_id`/`text` is missing or not a string."""
    for column in (ID_COLUMN, TEXT_COLUMN):
        if column not in schema.names:
            raise ValueError(f"{uri}: column {column!r} is missing; the input needs string columns "
                             f"'doc_id' and 'text' (found: {', '.join(schema.names)})")
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"{uri}: column {column!r} must be a string, got {kind}; cast it to string, "
                             f"e.g. table.set_column(i, {column!r}, table[{column!r}].cast(pa.string()))")


def unicode_error(value: str) -> str | None:
    """A message when `value` holds a lone surrogate (not encodable as UTF-8), else None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"lone surrogate U+{ord(value[err.start]):04X} at offset {err.start}"
    return None


def document_error(doc_id, text, limits: Limits) -> str | None:
    """Why a (doc_id, text) pair cannot be linked, or None when it can."""
    if doc_id is None:
        return "doc_id is missing or null; every document needs a unique string doc_id"
    if not isinstance(doc_id, str):
        return f"doc_id must be a string, got {type(doc_id).__name__} {doc_id!r}"
    if not doc_id:
        return "doc_id is empty"
    if problem := unicode_error(doc_id):
        return f"doc_id is not valid Unicode: {problem}"
    if text is None:
        return "text is missing or null"
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "text is empty"
    if len(text) > limits.max_chars:
        return f"text has {len(text)} characters, over the limit of {limits.max_chars}; split it or raise --max-chars"
    if problem := unicode_error(text):
        return f"text is not valid Unicode: {problem}"
    return None


@dataclass
class RawRow:
    """One input row before validation."""

    row: int  # JSONL line number (1-based) or Parquet row index (0-based)
    doc_id: object  # as read; validated later
    text: object  # as read; validated later
    extra: dict  # the other columns, carried through
    error: str | None = None  # a read-level problem (bad JSON, bad UTF-8), set before validation


def iter_jsonl(filesystem: pafs.FileSystem, path: str) -> Iterator[RawRow]:
    """Rows of a JSONL file; blank lines are skipped, a bad line yields a row with `error` set."""
    with filesystem.open_input_stream(path) as stream:
        for line_no, raw in enumerate(io.BufferedReader(stream), start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield RawRow(line_no, None, None, {}, f"line is not valid UTF-8 (byte {err.start}); re-encode the file as UTF-8")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield RawRow(line_no, None, None, {}, f"line is not valid JSON: {err}")
                continue
            if not isinstance(obj, dict):
                yield RawRow(line_no, None, None, {}, f"line must be a JSON object with doc_id and text, got {type(obj).__name__}")
                continue
            doc_id, text = obj.pop(ID_COLUMN, None), obj.pop(TEXT_COLUMN, None)
            yield RawRow(line_no, doc_id, text, obj)


def iter_parquet(filesystem: pafs.FileSystem, path: str, uri: str, batch_rows: int) -> Iterator[RawRow]:
    """Rows of a Parquet file, read a record batch at a time."""
    with filesystem.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        check_parquet_schema(parquet.schema_arrow, uri)
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            for record in batch.to_pylist():
                yield RawRow(row, record.pop(ID_COLUMN), record.pop(TEXT_COLUMN), record)
                row += 1


def iter_ids_and_fields(input_set: InputSet, file: InputFile) -> Iterator[tuple[int, object, dict]]:
    """(row, doc_id, {carried column: arrow type}) of a file; Parquet reads only the id column."""
    if file.format == "parquet":
        with input_set.filesystem.open_input_file(file.path) as handle:
            parquet = pq.ParquetFile(handle)
            check_parquet_schema(parquet.schema_arrow, file.uri)
            fields = {f.name: f.type for f in parquet.schema_arrow if f.name not in (ID_COLUMN, TEXT_COLUMN)}
            row = 0
            for batch in parquet.iter_batches(columns=[ID_COLUMN]):
                for doc_id in batch.column(0).to_pylist():
                    yield row, doc_id, fields
                    row += 1
    else:  # JSONL values are carried as text: strings as they are, other JSON values as JSON
        for raw in iter_jsonl(input_set.filesystem, file.path):
            yield raw.row, raw.doc_id, dict.fromkeys(raw.extra, pa.string())


@dataclass
class Scan:
    """What the job must know about all the input before streaming it."""

    duplicates: dict[str, dict[int, str]]  # uri -> {row: message} for every repeated doc_id
    carried: list[tuple[str, pa.Field]]  # input column name -> its output field, for every carried column


def scan_inputs(input_set: InputSet) -> Scan:
    """Find duplicate doc_ids (a later row repeats an earlier one; files in uri order) and the carried
    columns of all files, so every output part has one schema."""
    first: dict[str, tuple[str, int]] = {}
    duplicates: dict[str, dict[int, str]] = {}
    types: dict[str, pa.DataType] = {}
    for file in input_set.files:
        for row, doc_id, fields in iter_ids_and_fields(input_set, file):
            for name, kind in fields.items():
                types[name] = kind if types.get(name, kind) == kind else pa.string()  # conflicting types: text
            if not isinstance(doc_id, str):
                continue
            if doc_id in first:
                where = first[doc_id]
                duplicates.setdefault(file.uri, {})[row] = (
                    f"duplicate doc_id {doc_id!r}: first seen in {where[0]} row {where[1]}; doc_ids must be unique")
            else:
                first[doc_id] = (file.uri, row)
    carried = [(name, pa.field(f"input_{name}" if name in RESERVED_COLUMNS else name, kind)) for name, kind in types.items()]
    return Scan(duplicates, carried)


def _as_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def rows_to_table(uri: str, rows: list[RawRow], limits: Limits, duplicates: Mapping[int, str],
                  carried: list[tuple[str, pa.Field]]) -> pa.Table:
    """Validated document rows as an Arrow table: doc_id, text, status, error, source, source_row, carried columns."""
    columns: dict[str, list] = {ID_COLUMN: [], TEXT_COLUMN: [], "status": [], "error": [], "source": [], "source_row": []}
    for r in rows:
        error = r.error or document_error(r.doc_id, r.text, limits) or duplicates.get(r.row)
        id_ok = isinstance(r.doc_id, str) and unicode_error(r.doc_id) is None
        text_ok = isinstance(r.text, str) and unicode_error(r.text) is None
        columns[ID_COLUMN].append(r.doc_id if id_ok else None)
        columns[TEXT_COLUMN].append(r.text if text_ok else None)
        columns["status"].append(ERROR if error else OK)
        columns["error"].append(error)
        columns["source"].append(uri)
        columns["source_row"].append(r.row)
    table = pa.table(columns, schema=pa.schema([
        (ID_COLUMN, pa.string()), (TEXT_COLUMN, pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("source", pa.string()), ("source_row", pa.int64())]))
    for name, out in carried:
        values = [r.extra.get(name) for r in rows]
        if pa.types.is_string(out.type):
            values = [_as_text(v) for v in values]
        table = table.append_column(out, pa.array(values, out.type))
    return table


@dataclass
class DocumentSource(Datasource):
    """Ray Data source: one read task per input file, streaming blocks of validated rows."""

    input_set: InputSet
    limits: Limits = field(default_factory=Limits)
    scan: Scan = field(default_factory=lambda: Scan({}, []))  # duplicates and carried columns (scan_inputs)
    skip: dict[str, set[int]] = field(default_factory=dict)  # uri -> rows already written (resume)
    rows_per_block: int = 256  # rows per emitted block; small keeps memory flat and batches flowing

    def __post_init__(self):
        super().__init__()

    def estimate_inmemory_data_size(self) -> int:
        return sum(f.size for f in self.input_set.files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        return [
            ReadTask(self._reader(file), BlockMetadata(num_rows=None, size_bytes=file.size, exec_stats=None, input_files=[file.uri]))
            for file in self.input_set.files
        ]

    def _reader(self, file: InputFile):
        filesystem, limits, rows_per_block = self.input_set.filesystem, self.limits, self.rows_per_block
        duplicates, skip = self.scan.duplicates.get(file.uri, {}), self.skip.get(file.uri, set())
        carried = self.scan.carried

        def read() -> Iterator[pa.Table]:
            rows = iter_parquet(filesystem, file.path, file.uri, rows_per_block) if file.format == "parquet" \
                else iter_jsonl(filesystem, file.path)
            pending: list[RawRow] = []
            for raw in rows:
                if raw.row in skip:
                    continue
                pending.append(raw)
                if len(pending) >= rows_per_block:
                    yield rows_to_table(file.uri, pending, limits, duplicates, carried)
                    pending = []
            if pending:
                yield rows_to_table(file.uri, pending, limits, duplicates, carried)

        return read
