"""Input side of the link job: resolve IN to files, read them as validated document rows.

IN is a Parquet or JSONL file, a folder, a glob, or any URI pyarrow's filesystems read
(`s3://`, `gs://`, `hdfs://`, `file://`). Every input row becomes exactly one row here:
a bad document (null, not a string, empty, over `max_chars`, invalid Unicode, duplicate
`doc_id`) keeps its place with `status = "error"` and a message, so nothing is lost.
Rows are identified by (`source`, `source_row`): the file and the line (JSONL, 1-based)
or row (Parquet, 0-based) they came from; resume and incremental runs key on that.

JSONL may be compressed, named by its suffix (`.jsonl.gz`, `.jsonl.bz2`, `.jsonl.zst`); a file
whose first bytes say otherwise is refused before any work. Lines are read with a byte cap
(`Limits.max_line_bytes`): a longer line is skipped in chunks, never held in memory, and becomes
an error row. A Parquet text over `max_chars` becomes an error row too, its text dropped in
Arrow before it becomes a Python string; record batches hold about BATCH_TEXT_BYTES of text.
pyarrow neither writes nor reads a Parquet value of 2 GiB or more and reads a data page whole,
so reading a Parquet file takes about its largest page. Files a folder or glob matches that are
neither Parquet nor JSONL are named in one warning; hidden files (`.`/`_` prefixes) are ignored.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from onegen.pipeline.uris import open_location, redact_uri

LOG = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
# Suffix of a compressed JSONL file -> pyarrow codec that reads it (codecs this pyarrow lacks are left out).
COMPRESSIONS = {suffix: codec for suffix, codec in ((".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd"))
                if pa.Codec.is_available(codec)}
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\x28\xb5\x2f\xfd": "zstd"}  # first bytes -> codec
GLOB_CHARS = "*?["
ID_COLUMN, TEXT_COLUMN = "doc_id", "text"
# Columns the job writes or passes between its stages (stages.OUTPUT_COLUMNS, SPANS, VECTORS and
# outputs.TOKENS_COLUMN); an input column with one of these names is carried as "input_<name>".
RESERVED_COLUMNS = frozenset({"mentions", "status", "error", "source", "source_row", "model", "index",
                              "_spans", "_vectors", "_generated_tokens"})
OK, ERROR = "ok", "error"
LINE_ENVELOPE_BYTES = 1 << 20  # room on a JSONL line for doc_id, the JSON syntax and carried columns
READ_CHUNK = 1 << 20  # bytes read at a time from an over-long line
BATCH_TEXT_BYTES = 64 << 20  # text bytes per Parquet record batch, about: fewer rows when texts are long


@dataclass(frozen=True)
class InputFile:
    """One input file."""

    uri: str  # how the user and the manifests name it: absolute local path or scheme://path (no credentials)
    path: str  # the path inside `filesystem` (no scheme)
    size: int  # bytes (compressed, for a compressed file)
    format: str  # "parquet" or "jsonl"
    compression: str | None = None  # pyarrow codec of a compressed JSONL file ("gzip", "bz2", "zstd")


@dataclass
class InputSet:
    """The files IN resolved to, sorted by uri, with the filesystem that reads them."""

    filesystem: pafs.FileSystem
    files: list[InputFile]


@dataclass(frozen=True)
class Limits:
    """What a document may be."""

    max_chars: int = 1_000_000  # longer texts get status=error (--max-chars)

    @property
    def max_line_bytes(self) -> int:
        """Longest JSONL line read: any JSON form of a `max_chars` text (at most 12 bytes a character,
        an escaped surrogate pair) plus room for the rest of the line."""
        return 12 * self.max_chars + LINE_ENVELOPE_BYTES


def split_compression(path: str) -> tuple[str, str | None]:
    """(name without its compression suffix, pyarrow codec) of a file name; codec None when plain."""
    for suffix, codec in COMPRESSIONS.items():
        if path.lower().endswith(suffix):
            return path[: -len(suffix)], codec
    return path, None


def file_format(path: str) -> str | None:
    """'parquet', 'jsonl' or None from a file name (JSONL possibly compressed)."""
    name, codec = split_compression(path.lower())
    if name.endswith(PARQUET_SUFFIXES) and codec is None:
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


def _listed(filesystem: pafs.FileSystem, path: str, name: str) -> tuple[str, list[pafs.FileInfo]]:
    """(folder the names are relative to, visible files) that a file, folder or glob path names."""
    if any(ch in path for ch in GLOB_CHARS):
        base = path[: min(path.index(ch) for ch in GLOB_CHARS if ch in path)].rsplit("/", 1)[0] or "/"
        return base, [i for i in filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
                      if i.type == pafs.FileType.File and _glob_match(i.path, path) and not _hidden(i.path[len(base):])]
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {name!r} not found: expected a Parquet or JSONL file, a folder, a glob or a URI")
    if info.type == pafs.FileType.Directory:
        return path, [i for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                      if i.type == pafs.FileType.File and not _hidden(i.path[len(path):])]
    if file_format(path) is None:
        raise ValueError(f"input {name!r}: unknown file type; expected a name ending in {_readable_suffixes()}")
    return path.rsplit("/", 1)[0], [info]


def _readable_suffixes() -> str:
    return f"{', '.join(PARQUET_SUFFIXES + JSONL_SUFFIXES)} (JSONL also as {', '.join(COMPRESSIONS)})"


def _warn_skipped(name: str, base: str, skipped: list[str]) -> None:
    """One warning naming the files a folder or glob matched that are not read."""
    if skipped:
        shown = [p[len(base):].lstrip("/") for p in skipped[:5]] + (["..."] if len(skipped) > 5 else [])
        LOG.warning("input %s: skipped %d files that are not Parquet or JSONL: %s (read: %s)",
                    name, len(skipped), ", ".join(shown), _readable_suffixes())


def check_compression(filesystem: pafs.FileSystem, file: InputFile) -> None:
    """Refuse a JSONL file whose first bytes say another compression than its name does."""
    with filesystem.open_input_stream(file.path, compression=None) as stream:
        head = stream.read(4)
    found = next((codec for magic, codec in MAGIC.items() if head.startswith(magic)), None)
    if head and found != file.compression:
        suffix = {codec: suffix for suffix, codec in COMPRESSIONS.items()}.get(found, "")
        raise ValueError(f"input {file.uri!r} holds {found or 'uncompressed'} data but its name says "
                         f"{file.compression or 'uncompressed'}; rename it {split_compression(file.uri)[0] + suffix!r}")


def resolve_input(spec: str) -> InputSet:
    """Resolve IN (file, folder, glob or URI) to the Parquet/JSONL files it names, checking that each
    JSONL file's compression is the one its name says; other files matched are named in one warning."""
    filesystem, path = open_location(spec)
    name = redact_uri(spec)
    scheme = spec.split("://", 1)[0] if "://" in spec else None  # None and "file": files are named by their path
    base, infos = _listed(filesystem, path, name)
    _warn_skipped(name, base, sorted(i.path for i in infos if file_format(i.path) is None))
    files = sorted((InputFile(i.path if scheme in (None, "file") else f"{scheme}://{i.path}", i.path, i.size,
                              file_format(i.path), split_compression(i.path)[1])
                    for i in infos if file_format(i.path)), key=lambda f: f.uri)
    if not files:
        raise FileNotFoundError(f"input {name!r} holds no Parquet or JSONL files (read: {_readable_suffixes()})")
    for file in files:
        if file.format == "jsonl":
            check_compression(filesystem, file)
    return InputSet(filesystem, files)


def content_hash(filesystem: pafs.FileSystem, path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path, compression=None) as stream:
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


def length_error(chars: int, limits: Limits) -> str | None:
    """A message when a text of `chars` characters is over the limit, else None."""
    if chars > limits.max_chars:
        return f"text has {chars} characters, over the limit of {limits.max_chars}; split it or raise --max-chars"
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
    if problem := length_error(len(text), limits):
        return problem
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
    error: str | None = None  # a read-level problem (bad JSON, bad UTF-8, over-long line or text), set before validation


def iter_lines(stream, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, size in bytes) of each line of a binary stream; a line over `max_bytes` is read on in chunks
    and dropped, never held whole: (None, its size)."""
    reader = io.BufferedReader(stream, buffer_size=READ_CHUNK)
    while line := reader.readline(max_bytes + 1):
        size = len(line)
        if size <= max_bytes or line.endswith(b"\n"):
            yield line, size
            continue
        while not line.endswith(b"\n") and (line := reader.readline(READ_CHUNK)):
            size += len(line)
        yield None, size


def _file_lines(stream, file: InputFile, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """`iter_lines` of a file; broken compressed data is a one-line ValueError naming the file."""
    try:
        yield from iter_lines(stream, max_bytes)
    except OSError as err:
        if file.compression is None:
            raise
        raise ValueError(f"input {file.uri!r}: its {file.compression} data is truncated or corrupt ({err}); "
                         f"re-create or re-download the file") from None


def parse_line(line_no: int, raw: bytes) -> RawRow:
    """One JSONL line as a row; a line that is not a UTF-8 JSON object gets `error` set."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return RawRow(line_no, None, None, {}, f"line is not valid UTF-8 (byte {err.start}); re-encode the file as UTF-8")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return RawRow(line_no, None, None, {}, f"line is not valid JSON: {err}")
    if not isinstance(obj, dict):
        return RawRow(line_no, None, None, {}, f"line must be a JSON object with doc_id and text, got {type(obj).__name__}")
    return RawRow(line_no, obj.pop(ID_COLUMN, None), obj.pop(TEXT_COLUMN, None), obj)


def iter_jsonl(filesystem: pafs.FileSystem, file: InputFile, limits: Limits) -> Iterator[RawRow]:
    """Rows of a JSONL file (decompressed as its name says); blank lines are skipped, a bad or over-long
    line yields a row with `error` set."""
    cap = limits.max_line_bytes
    with filesystem.open_input_stream(file.path, compression=file.compression) as stream:
        for line_no, (raw, size) in enumerate(_file_lines(stream, file, cap), start=1):
            if raw is None:
                yield RawRow(line_no, None, None, {}, f"line is {size:,} bytes, over the cap of {cap:,} bytes for texts of "
                                                      f"--max-chars {limits.max_chars:,}; split the document or raise --max-chars")
            elif raw.strip():
                yield parse_line(line_no, raw)


def iter_parquet(filesystem: pafs.FileSystem, file: InputFile, limits: Limits, batch_rows: int) -> Iterator[RawRow]:
    """Rows of a Parquet file, read a record batch at a time; a text over the limit is dropped in Arrow
    (an error row with a null text) before it becomes a Python string."""
    with filesystem.open_input_file(file.path) as handle:
        parquet = pq.ParquetFile(handle, buffer_size=READ_CHUNK)  # buffered: pages are read as needed
        check_parquet_schema(parquet.schema_arrow, file.uri)
        row = 0
        for batch in text_batches(parquet, batch_rows):
            texts = batch.column(TEXT_COLUMN)
            chars = pc.utf8_length(texts)
            too_long = pc.fill_null(pc.greater(chars, limits.max_chars), False)
            texts = pc.if_else(too_long, pa.scalar(None, texts.type), texts)
            records = batch.drop_columns([TEXT_COLUMN]).to_pylist()
            for record, text, n in zip(records, texts.to_pylist(), chars.to_pylist()):
                yield RawRow(row, record.pop(ID_COLUMN), text, record, length_error(n or 0, limits))
                row += 1


def text_batches(parquet: pq.ParquetFile, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of each row group, of fewer than `batch_rows` rows where the group's texts are long,
    so that a batch holds about BATCH_TEXT_BYTES of text (a single text may still take up to 2 GiB)."""
    for group in range(parquet.num_row_groups):
        meta = parquet.metadata.row_group(group)
        text_bytes = next(meta.column(i).total_uncompressed_size for i in range(meta.num_columns)
                          if meta.column(i).path_in_schema == TEXT_COLUMN)
        rows = max(1, min(batch_rows, BATCH_TEXT_BYTES * meta.num_rows // max(text_bytes, 1)))
        yield from parquet.iter_batches(batch_size=rows, row_groups=[group])


def iter_ids_and_fields(input_set: InputSet, file: InputFile, limits: Limits) -> Iterator[tuple[int, object, dict]]:
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
        for raw in iter_jsonl(input_set.filesystem, file, limits):
            yield raw.row, raw.doc_id, dict.fromkeys(raw.extra, pa.string())


@dataclass
class Scan:
    """What the job must know about all the input before streaming it."""

    duplicates: dict[str, dict[int, str]]  # uri -> {row: message} for every repeated doc_id
    carried: list[tuple[str, pa.Field]]  # input column name -> its output field, for every carried column


def carried_fields(types: Mapping[str, pa.DataType]) -> list[tuple[str, pa.Field]]:
    """(input column, output field) of every carried column. A column named like one the job writes is
    prefixed with "input_", again while the name is taken by another input column."""
    taken, carried = set(types), []
    for name, kind in types.items():
        out = name
        while out in RESERVED_COLUMNS or (out != name and out in taken):
            out = f"input_{out}"
        taken.add(out)
        carried.append((name, pa.field(out, kind)))
    return carried


def scan_inputs(input_set: InputSet, limits: Limits = Limits()) -> Scan:
    """Find duplicate doc_ids (a later row repeats an earlier one; files in uri order) and the carried
    columns of all files, so every output part has one schema. `limits` must be the reader's: a JSONL
    line over its byte cap is not parsed."""
    first: dict[str, tuple[str, int]] = {}
    duplicates: dict[str, dict[int, str]] = {}
    types: dict[str, pa.DataType] = {}
    for file in input_set.files:
        for row, doc_id, fields in iter_ids_and_fields(input_set, file, limits):
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
    return Scan(duplicates, carried_fields(types))


def _as_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def rows_to_table(uri: str, rows: list[RawRow], limits: Limits, duplicates: Mapping[int, str],
                  carried: list[tuple[str, pa.Field]]) -> pa.Table:
    """Validated document rows as an Arrow table: doc_id, text, status, error, source, source_row, carried columns."""
    columns: dict[str, list] = {ID_COLUMN: [], TEXT_COLUMN: [], "status": [], "error": [], "source": [], "source_row": []}
    for r in rows:
        error = r.error or document_error(r.doc_id, r.text, limits) or duplicates.get(r.row)
        id_ok = isinstance(r.doc_id, str) and unicode_error(r.doc_id) is None
        text_ok = isinstance(r.text, str) and len(r.text) <= limits.max_chars and unicode_error(r.text) is None
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
            rows = iter_parquet(filesystem, file, limits, rows_per_block) if file.format == "parquet" \
                else iter_jsonl(filesystem, file, limits)
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
