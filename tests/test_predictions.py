"""Reading predictions from link-job Parquet output and from NIF files."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.nif import to_nif
from eval.predictions import read_predictions
from onegen.spans import Document, Mention

CANDIDATES = pa.list_(pa.struct([("id", pa.string()), ("score", pa.float32())]))
MENTION = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("surface", pa.string()),
                     ("entity_id", pa.string()), ("score", pa.float32()), ("candidates", CANDIDATES)])
SCHEMA = pa.schema([("doc_id", pa.string()), ("mentions", pa.list_(MENTION)), ("status", pa.string()),
                    ("error", pa.string()), ("model", pa.string())])


def mention(start, end, surface, entity_id, score=0.9):
    return {"start": start, "end": end, "surface": surface, "entity_id": entity_id, "score": score,
            "candidates": [{"id": entity_id or "X", "score": score}]}


def write_parquet(path, rows, schema=SCHEMA):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


ROWS = [
    {"doc_id": "d1", "status": "ok", "error": None, "model": "m",
     "mentions": [mention(10, 15, "Paris", "http://en.wikipedia.org/wiki/Paris"), mention(0, 6, "German", "Germany"),
                  mention(20, 24, "Lyon", None)]},
    {"doc_id": "d2", "status": "error", "error": "text is empty", "model": "m",
     "mentions": [mention(0, 3, "Foo", "Foo")]},
    {"doc_id": "d3", "status": "ok", "error": None, "model": "m", "mentions": None},
]


def test_parquet_file_rows_error_rows_and_nil(tmp_path):
    write_parquet(tmp_path / "out.parquet", ROWS)
    pred = read_predictions(tmp_path / "out.parquet")
    # sorted by offsets, URL ids canonicalised, null entity_id is NIL
    assert pred["d1"] == [Mention(0, 6, "German", "Germany"), Mention(10, 15, "Paris", "Paris"),
                          Mention(20, 24, "Lyon", None)]
    assert pred["d2"] == []  # an error row contributes no annotations, even when it carries some
    assert pred.errors == {"d2": "text is empty"}
    assert pred["d3"] == []
    assert sorted(pred) == ["d1", "d2", "d3"] and len(pred) == 3


def test_parquet_folder_reads_every_part(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_parquet(out / "part-0.parquet", ROWS[:1])
    write_parquet(out / "part-1.parquet", ROWS[1:])
    (out / "_SUCCESS").write_text("")  # writers leave marker files beside the parts
    pred = read_predictions(out)
    assert sorted(pred) == ["d1", "d2", "d3"] and list(pred.errors) == ["d2"]


def test_parquet_without_extension_is_detected(tmp_path):
    write_parquet(tmp_path / "predictions.bin", ROWS)
    assert sorted(read_predictions(tmp_path / "predictions.bin")) == ["d1", "d2", "d3"]


def test_missing_column_is_named(tmp_path):
    schema = pa.schema([f for f in SCHEMA if f.name != "status"])
    write_parquet(tmp_path / "out.parquet", [{k: v for k, v in r.items() if k != "status"} for r in ROWS], schema)
    with pytest.raises(ValueError, match="missing column.*status"):
        read_predictions(tmp_path / "out.parquet")


def test_missing_mention_field_is_named(tmp_path):
    short = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("surface", pa.string())])
    schema = pa.schema([("doc_id", pa.string()), ("mentions", pa.list_(short)), ("status", pa.string())])
    write_parquet(tmp_path / "out.parquet", [{"doc_id": "d1", "status": "ok", "mentions": []}], schema)
    with pytest.raises(ValueError, match="missing entity_id"):
        read_predictions(tmp_path / "out.parquet")


def test_duplicate_doc_id_is_an_error(tmp_path):
    write_parquet(tmp_path / "out.parquet", ROWS + ROWS[:1])
    with pytest.raises(ValueError, match="'d1' appears twice"):
        read_predictions(tmp_path / "out.parquet")


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.parquet files"):
        read_predictions(tmp_path)
    with pytest.raises(FileNotFoundError, match="predictions not found"):
        read_predictions(tmp_path / "nope.parquet")


def test_nif_predictions_keyed_by_context_uri(tmp_path):
    text = "Paris is in France."
    doc = Document("http://example.org/d1#char=0,19", text,
                   [Mention(0, 5, "Paris", "Paris"), Mention(12, 18, "France", None)])
    (tmp_path / "pred.ttl").write_text(to_nif([doc]), encoding="utf-8")
    pred = read_predictions(tmp_path / "pred.ttl")
    assert dict(pred) == {doc.doc_id: doc.mentions} and pred.errors == {}
