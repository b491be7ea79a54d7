"""Link job input side: resolving IN, reading JSONL/Parquet, validating every row."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onegen.pipeline.inputs import (DocumentSource, Limits, document_error, resolve_input, scan_inputs)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_all(source: DocumentSource) -> list[dict]:
    return [row for task in source.get_read_tasks(1) for block in task.read_fn() for row in block.to_pylist()]


def test_file_folder_glob_and_uri_resolve_to_sorted_files(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl", [{"doc_id": "b", "text": "x"}])
    pq.write_table(pa.table({"doc_id": ["a"], "text": ["y"]}), tmp_path / "sub" / "a.parquet")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "_hidden.jsonl").write_text("")
    folder = resolve_input(str(tmp_path))
    assert [(f.uri, f.format) for f in folder.files] == [
        (str(tmp_path / "b.jsonl"), "jsonl"), (str(tmp_path / "sub" / "a.parquet"), "parquet")]
    assert [f.uri for f in resolve_input(str(tmp_path / "*.jsonl")).files] == [str(tmp_path / "b.jsonl")]
    assert [f.uri for f in resolve_input(str(tmp_path / "**" / "*.parquet")).files] == [str(tmp_path / "sub" / "a.parquet")]
    assert [f.uri for f in resolve_input(f"file://{tmp_path}/b.jsonl").files] == [str(tmp_path / "b.jsonl")]


def test_missing_input_and_unknown_type_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="Parquet or JSONL"):
        resolve_input(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unknown file type"):
        resolve_input(str(tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError, match="holds no Parquet"):
        resolve_input(str(tmp_path / "*.jsonl"))


@pytest.mark.parametrize("doc_id, text, message", [
    (None, "t", "doc_id is missing"), (7, "t", "doc_id must be a string"), ("", "t", "doc_id is empty"),
    ("d", None, "text is missing or null"), ("d", ["t"], "text must be a string, got list"), ("d", "  \n", "text is empty"),
    ("d", "x" * 11, "11 characters, over the limit of 10"), ("d", "ok \ud800 no", "lone surrogate U+D800 at offset 3"),
    ("d\udc80", "t", "doc_id is not valid Unicode"),
])
def test_bad_documents_get_a_message(doc_id, text, message):
    assert message in document_error(doc_id, text, Limits(max_chars=10))


def test_good_document_has_no_error():
    assert document_error("d", "Paris, France.", Limits(max_chars=100)) is None


def test_every_jsonl_line_becomes_one_row_bad_ones_with_errors(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"doc_id": "a", "text": "Paris", "lang": "en"}\n\n'
                     b'{"doc_id": "b", "text": "x\\ud800"}\n'
                     b'not json\n'
                     b'[1, 2]\n'
                     b'{"doc_id": "c", "text": "caf\xe9"}\n'
                     b'{"doc_id": "a", "text": "again", "status": "draft"}\n')
    inputs = resolve_input(str(path))
    rows = read_all(DocumentSource(inputs, scan=scan_inputs(inputs), rows_per_block=2))
    assert [r["source_row"] for r in rows] == [1, 3, 4, 5, 6, 7]
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error", "error", "error"]
    errors = [r["error"] for r in rows]
    assert "lone surrogate" in errors[1] and rows[1]["text"] is None and rows[1]["doc_id"] == "b"
    assert "not valid JSON" in errors[2] and "JSON object" in errors[3] and "not valid UTF-8" in errors[4]
    assert "duplicate doc_id 'a'" in errors[5] and "row 1" in errors[5]
    assert rows[0]["lang"] == "en" and rows[5]["input_status"] == "draft"  # carried; reserved names prefixed
    assert [r["input_status"] for r in rows[:2]] == [None, None]  # every block has every carried column


def test_parquet_rows_carry_columns_and_skip_resumed_rows(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "text": ["A", None, "C"], "year": [1, 2, 3]}), path)
    inputs = resolve_input(str(path))
    rows = read_all(DocumentSource(inputs, scan=scan_inputs(inputs), skip={str(path): {0}}))
    assert [(r["doc_id"], r["status"], r["year"], r["source_row"]) for r in rows] == [("b", "error", 2, 1), ("c", "ok", 3, 2)]


@pytest.mark.parametrize("table, message", [
    (pa.table({"id": ["a"], "text": ["t"]}), "column 'doc_id' is missing"),
    (pa.table({"doc_id": [1], "text": ["t"]}), "column 'doc_id' must be a string, got int64"),
])
def test_wrong_parquet_schema_names_the_column(tmp_path, table, message):
    pq.write_table(table, tmp_path / "in.parquet")
    inputs = resolve_input(str(tmp_path / "in.parquet"))
    with pytest.raises(ValueError, match=message):
        scan_inputs(inputs)


def test_duplicates_are_found_across_files_in_order(tmp_path):
    write_jsonl(tmp_path / "1.jsonl", [{"doc_id": "x", "text": "a"}, {"doc_id": "y", "text": "b"}])
    write_jsonl(tmp_path / "2.jsonl", [{"doc_id": "y", "text": "c"}, {"doc_id": "x", "text": "d"}])
    duplicates = scan_inputs(resolve_input(str(tmp_path))).duplicates
    assert list(duplicates) == [str(tmp_path / "2.jsonl")] and sorted(duplicates[str(tmp_path / "2.jsonl")]) == [1, 2]


def test_carried_columns_get_one_schema_over_all_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"doc_id": "a", "text": "t", "year": 1999, "tags": ["x"], "lang": "en"}])
    pq.write_table(pa.table({"doc_id": ["b"], "text": ["t"], "year": [2000], "score": [0.5]}), tmp_path / "b.parquet")
    scan = scan_inputs(resolve_input(str(tmp_path)))
    assert [(name, out.type) for name, out in scan.carried] == [
        ("year", pa.string()), ("tags", pa.string()), ("lang", pa.string()), ("score", pa.float64())]
    rows = read_all(DocumentSource(resolve_input(str(tmp_path)), scan=scan))
    assert [(r["year"], r["tags"], r["score"]) for r in rows] == [("1999", '["x"]', None), ("2000", None, 0.5)]
