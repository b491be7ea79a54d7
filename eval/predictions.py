"""Predicted annotations for the scorer, from a NIF file or from a link-job Parquet output (DESIGN section 4)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eval.nif import read_nif, to_nif
from kb.files import atomic_output
from kb.ids import canonical_id
from onegen.spans import Document, Mention

PARQUET_MAGIC = b"PAR1"
REQUIRED_COLUMNS = ("doc_id", "mentions", "status")  # a link-job output row; `error` is read when present
REQUIRED_MENTION_FIELDS = ("start", "end", "surface", "entity_id")  # of each struct in `mentions`


@dataclass
class Predictions(Mapping):
    """doc_id -> predicted annotations (a read-only mapping), plus the documents the link job failed on."""

    mentions: dict[str, list[Mention]]  # doc_id -> mentions sorted by (start, end); [] for error rows
    errors: dict[str, str] = field(default_factory=dict)  # doc_id -> error message of rows with status "error"

    def __getitem__(self, doc_id: str) -> list[Mention]:
        return self.mentions[doc_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.mentions)

    def __len__(self) -> int:
        return len(self.mentions)


def is_parquet(path: Path) -> bool:
    """A folder (of Parquet files), a `.parquet` file, or a file starting with the Parquet magic bytes."""
    if path.is_dir() or path.suffix == ".parquet":
        return True
    with path.open("rb") as f:
        return f.read(4) == PARQUET_MAGIC


def read_predictions(path: str | Path) -> Predictions:
    """Read predictions from a NIF file (context URI = doc_id) or a link-job Parquet file or folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions not found: {path} (expected a NIF file or link-job Parquet output)")
    if is_parquet(path):
        return read_parquet_predictions(path)
    return Predictions({doc.doc_id: doc.mentions for doc in read_nif(path)})


def write_nif_predictions(path: str | Path, gold: list[Document], pred: Mapping[str, list[Mention]]) -> Path:
    """Write predictions as a NIF file, each gold document's text with its predicted mentions (none where `pred` has
    no entry), all at once or not at all; `read_predictions` reads it back for `score` and `compare`."""
    with atomic_output(path) as f:
        f.write(to_nif([Document(doc.doc_id, doc.text, list(pred.get(doc.doc_id, []))) for doc in gold]))
    return Path(path)


def _parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a file or folder (recursively, sorted; other files such as _SUCCESS are skipped)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.parquet files in folder {path} (expected a link-job output folder)")
    return files


def read_parquet_predictions(path: str | Path) -> Predictions:
    """Read a link-job output: one row per document with `doc_id`, `mentions`, `status` and `error`."""
    import pyarrow.parquet as pq

    annotations: dict[str, list[Mention]] = {}
    errors: dict[str, str] = {}
    for file in _parquet_files(Path(path)):
        schema = pq.read_schema(file)
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"{file}: missing column(s) {', '.join(missing)}; a link-job output has "
                             f"{', '.join(REQUIRED_COLUMNS)}, error (DESIGN section 4); found {', '.join(schema.names)}")
        mention_type = schema.field("mentions").type
        fields = [f.name for f in mention_type.value_type] if hasattr(mention_type, "value_type") else []
        if missing := [f for f in REQUIRED_MENTION_FIELDS if f not in fields]:
            raise ValueError(f"{file}: column 'mentions' must be a list of structs with fields "
                             f"{', '.join(REQUIRED_MENTION_FIELDS)}; missing {', '.join(missing)} (type is {mention_type})")
        columns = list(REQUIRED_COLUMNS) + (["error"] if "error" in schema.names else [])
        for row in pq.read_table(file, columns=columns).to_pylist():
            doc_id = row["doc_id"]
            if doc_id in annotations:
                raise ValueError(f"{file}: doc_id {doc_id!r} appears twice in the predictions; doc ids must be unique")
            if row["status"] == "error":
                errors[doc_id] = row.get("error") or "(no message)"
                annotations[doc_id] = []
                continue
            annotations[doc_id] = sorted(
                (Mention(m["start"], m["end"], m["surface"], canonical_id(m["entity_id"]) if m["entity_id"] else None)
                 for m in row["mentions"] or []),
                key=lambda a: (a.start, a.end),
            )
    return Predictions(annotations, errors)
