"""Link job inputs that are large, compressed, misnamed, oddly columned or credentialed (issue 26, section 2)."""
import json
import logging
import os
import tracemalloc

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray

from link_fakes import fake_linking, ray_env
from onegen.pipeline.inputs import RESERVED_COLUMNS, DocumentSource, Limits, resolve_input, scan_inputs
from onegen.pipeline.job import JobConfig, run_job
from onegen.pipeline.outputs import Output

SECRET = "s3cr3tV4lue"
LINES = [{"doc_id": f"d{i}", "text": f"Paris number {i}."} for i in range(3)]


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def write(path, data: bytes, codec: str | None = None):
    """Write `data` to `path`, compressed with a pyarrow codec when given."""
    with pafs.LocalFileSystem().open_output_stream(str(path), compression=codec) as stream:
        stream.write(data)
    return path


def read_all(source: DocumentSource) -> list[dict]:
    return [row for task in source.get_read_tasks(1) for block in task.read_fn() for row in block.to_pylist()]


def read_with_peak(spec, limits: Limits) -> tuple[list[dict], int]:
    """Rows of IN as the job reads them (driver scan, then the reader) and the peak Python memory on the way."""
    tracemalloc.start()
    try:
        inputs = resolve_input(str(spec))
        rows = read_all(DocumentSource(inputs, limits=limits, scan=scan_inputs(inputs)))
        return rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- size -------------------------------------------------------------------------------------------

def test_an_over_long_line_is_an_error_row_and_never_held_in_memory(tmp_path):
    limits = Limits(max_chars=1000)  # lines over 12 * 1000 + 1 MiB bytes are not read whole
    path = tmp_path / "in.jsonl"
    with open(path, "wb") as f:
        f.write(jsonl_bytes(LINES[:1]) + b'{"doc_id": "big", "text": "')
        for _ in range(64):  # a 64 MiB text
            f.write(b"x" * (1 << 20))
        f.write(b'"}\n' + jsonl_bytes(LINES[1:2]))
    rows, peak = read_with_peak(path, limits)
    assert [(r["doc_id"], r["status"], r["source_row"]) for r in rows] == [("d0", "ok", 1), (None, "error", 2), ("d1", "ok", 3)]
    assert rows[1]["text"] is None
    assert "line is 67,108,894 bytes, over the cap of 1,060,576 bytes" in rows[1]["error"] and "--max-chars" in rows[1]["error"]
    assert peak < 32 << 20, f"reading held {peak / 2**20:.0f} MiB"  # the scan's lines may take twice its 13 MB cap


def test_a_line_over_2_gib_is_read_past_in_chunks(tmp_path):
    """A sparse file: the 2 GiB hole reads as NUL bytes without taking disk space (about 7 s: read twice)."""
    path = tmp_path / "in.jsonl"
    with open(path, "wb") as f:
        f.write(jsonl_bytes(LINES[:1]) + b'{"doc_id": "huge", "text": "')
        f.seek((2 << 30) + 100)
        f.write(b'"}\n' + jsonl_bytes(LINES[1:2]))
    rows, peak = read_with_peak(path, Limits())
    assert [(r["doc_id"], r["status"], r["text"] is None) for r in rows] == [("d0", "ok", False), (None, "error", True), ("d1", "ok", False)]
    assert "over the cap of 13,048,576 bytes" in rows[1]["error"]
    assert peak < 64 << 20, f"reading held {peak / 2**20:.0f} MiB"


def test_over_limit_texts_are_error_rows_without_their_text(tmp_path):
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "a.jsonl", jsonl_bytes([{"doc_id": "j1", "text": "x" * 11}, {"doc_id": "j2", "text": "short"}]))
    pq.write_table(pa.table({"doc_id": ["p1", "p2", "p3"], "text": ["y" * 11, "short", "é" * 10]}), tmp_path / "in" / "b.parquet")
    inputs = resolve_input(str(tmp_path / "in"))
    rows = read_all(DocumentSource(inputs, limits=Limits(max_chars=10), scan=scan_inputs(inputs)))
    assert [(r["doc_id"], r["status"], r["text"]) for r in rows] == [
        ("j1", "error", None), ("j2", "ok", "short"), ("p1", "error", None), ("p2", "ok", "short"), ("p3", "ok", "é" * 10)]
    assert [r["error"] for r in rows if r["status"] == "error"] == [
        "text has 11 characters, over the limit of 10; split it or raise --max-chars"] * 2


def test_parquet_batches_take_fewer_rows_when_texts_are_long(tmp_path, monkeypatch):
    import onegen.pipeline.inputs as inputs_module

    monkeypatch.setattr(inputs_module, "BATCH_TEXT_BYTES", 1000)
    texts = ["short"] * 300 + [f"{i:03}" + "x" * 247 for i in range(40)]  # row groups of 100: 3 short, then long texts
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(340)], "text": texts}), tmp_path / "in.parquet", row_group_size=100)
    with pq.ParquetFile(tmp_path / "in.parquet") as parquet:
        sizes = [batch.num_rows for batch in inputs_module.text_batches(parquet, batch_rows=256)]
    assert sizes[:3] == [100, 100, 100] and sum(sizes[3:]) == 40
    assert max(sizes[3:]) <= 4  # about 1000 bytes of text a batch: 4 texts of 250 characters at most


# --- compression and file types ---------------------------------------------------------------------

@pytest.mark.parametrize("name, codec", [("docs.jsonl.gz", "gzip"), ("docs.json.gz", "gzip"), ("docs.ndjson.gz", "gzip"),
                                         ("docs.jsonl.bz2", "bz2"), ("docs.jsonl.zst", "zstd")])
def test_compressed_jsonl_is_read_as_a_file_in_a_folder_and_by_glob(tmp_path, name, codec):
    (tmp_path / "in").mkdir()
    path = write(tmp_path / "in" / name, jsonl_bytes(LINES), codec)
    for spec in (path, tmp_path / "in", tmp_path / "in" / "*"):
        inputs = resolve_input(str(spec))
        assert [f.uri for f in inputs.files] == [str(path)]
        rows = read_all(DocumentSource(inputs, scan=scan_inputs(inputs)))
        assert [(r["doc_id"], r["status"], r["source"], r["source_row"]) for r in rows] == [
            (d["doc_id"], "ok", str(path), i + 1) for i, d in enumerate(LINES)]


def test_files_that_are_not_read_are_named_in_one_warning(tmp_path, caplog):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write(folder / "a.jsonl", jsonl_bytes(LINES))
    for name in ("b.csv", "sub/c.txt", "d.parquet.gz", "_manifest.json", ".tmp-1-part.jsonl", "_SUCCESS", "sub/.hidden.csv"):
        write(folder / name, b"doc_id,text\n")
    with caplog.at_level(logging.WARNING):
        assert [f.uri for f in resolve_input(str(folder)).files] == [str(folder / "a.jsonl")]
        assert [f.uri for f in resolve_input(str(folder / "*")).files] == [str(folder / "a.jsonl")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # one per resolve
    assert "skipped 3 files that are not Parquet or JSONL: b.csv, d.parquet.gz, sub/c.txt (" in warnings[0]
    assert "skipped 2 files that are not Parquet or JSONL: b.csv, d.parquet.gz (" in warnings[1]  # `*`: one level
    assert not any(hidden in " ".join(warnings) for hidden in ("_manifest", ".tmp-", "_SUCCESS", ".hidden"))


@pytest.mark.parametrize("name, codec, rename", [
    ("docs.jsonl", "gzip", "docs.jsonl.gz"), ("docs.ndjson", "zstd", "docs.ndjson.zst"),
    ("docs.jsonl.gz", None, "docs.jsonl"), ("docs.jsonl.gz", "bz2", "docs.jsonl.bz2"),
])
def test_compression_other_than_the_name_says_is_refused_in_one_line(tmp_path, name, codec, rename):
    write(tmp_path / name, jsonl_bytes(LINES), codec)
    with pytest.raises(ValueError) as refused:
        resolve_input(str(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and f"input {str(tmp_path / name)!r}" in message
    assert f"rename it {str(tmp_path / rename)!r}" in message


def test_a_truncated_compressed_file_is_a_one_line_error_naming_it(tmp_path):
    full = write(tmp_path / "full.jsonl.gz", jsonl_bytes([{"doc_id": f"d{i}", "text": f"Text {i}."} for i in range(5000)]), "gzip")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    inputs = resolve_input(str(path))
    with pytest.raises(ValueError) as refused:
        scan_inputs(inputs)  # the driver's scan reads every file before any Ray work
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "gzip data is truncated or corrupt" in message


# --- columns ----------------------------------------------------------------------------------------

def test_reserved_columns_cover_every_column_the_job_adds():
    from onegen.pipeline.outputs import TOKENS_COLUMN
    from onegen.pipeline.stages import OUTPUT_COLUMNS, SPANS, VECTORS

    assert (set(OUTPUT_COLUMNS) - {"doc_id", "text"}) | {SPANS, VECTORS, TOKENS_COLUMN} <= RESERVED_COLUMNS


def test_input_columns_named_like_the_jobs_get_a_free_prefixed_name(tmp_path):
    write(tmp_path / "a.jsonl", jsonl_bytes([{"doc_id": "a", "text": "t", "mentions": 1, "input_mentions": 2,
                                              "_spans": 3, "lang": "en"}]))
    names = {name: out.name for name, out in scan_inputs(resolve_input(str(tmp_path))).carried}
    assert names == {"mentions": "input_input_mentions", "input_mentions": "input_mentions", "_spans": "input__spans",
                     "lang": "lang"}


# --- credentials --------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, shown", [
    ("s3://AKIAKEY:s3cr3t%2FV4lue@bucket/docs/*.jsonl", "s3://***@bucket/docs/*.jsonl"),
    ("https://user:s3cr3t@host/a.jsonl?X-Amz-Signature=s3cr3t&part=1", "https://***@host/a.jsonl?X-Amz-Signature=***&part=1"),
    ("file:///data/in.jsonl?token=s3cr3t", "file:///data/in.jsonl?token=***"),
    ("gs://bucket/a@b.jsonl?generation=3", "gs://bucket/a@b.jsonl?generation=3"),
    ("/data/user:pass@host/x.jsonl", "/data/user:pass@host/x.jsonl"),  # a local path is shown as it is
])
def test_redact_uri_hides_user_info_and_secret_query_values(uri, shown):
    from onegen.pipeline.uris import redact_uri

    assert redact_uri(uri) == shown


@pytest.mark.parametrize("uri", [f"https://user:{SECRET}@example.com/docs.jsonl", f"gs://KEY:{SECRET}@bucket/docs.jsonl",
                                 f"mock://user:{SECRET}@host/missing.jsonl"])
def test_errors_about_a_credentialed_input_hide_the_secret(uri):
    with pytest.raises((ValueError, OSError)) as refused:
        resolve_input(uri)
    assert SECRET not in str(refused.value) and "***" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("uri", [f"https://user:{SECRET}@example.com/out", f"gs://KEY:{SECRET}@bucket/out"])
def test_errors_about_a_credentialed_output_hide_the_secret(uri):
    with pytest.raises(ValueError) as refused:
        Output.from_uri(uri)
    assert SECRET not in str(refused.value) and "***" in str(refused.value) and "\n" not in str(refused.value)


def test_an_output_names_itself_without_credentials():
    assert Output.from_uri(f"mock://user:{SECRET}@host/out").uri == "mock://***@host/out"


# --- end to end through run_job (Ray, fakes) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    # address="local": a Ray of its own, even while another test's `ray start` cluster is up
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, runtime_env=ray_env())
    yield
    ray.shutdown()


def config(input, output, **overrides) -> JobConfig:
    return JobConfig(input=str(input), output=str(output), cpus_per_replica=0.5, batch_size=4, nil_threshold=0.9, **overrides)


def rows_of(folder) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: (r["source"], r["source_row"]))


@pytest.mark.ray
def test_input_columns_named_like_output_columns_are_carried_end_to_end(tmp_path, ray_session):
    """JSONL and Parquet with every column name the job writes or passes between its stages, and a column
    already named like the prefixed one; one file compressed."""
    (tmp_path / "in").mkdir()
    own = {"mentions": [{"start": 0}], "status": "draft", "error": None, "source": "crawl-7", "source_row": 7,
           "model": "gpt", "index": 3, "_spans": "s", "_vectors": [0.5], "_generated_tokens": 999, "input_mentions": "mine"}
    write(tmp_path / "in" / "a.jsonl.gz", jsonl_bytes([{"doc_id": "j", "text": "Paris and Rome.", **own}]), "gzip")
    pq.write_table(pa.table({"doc_id": ["p"], "text": ["Berlin in Germany."], "mentions": [5], "status": ["new"],
                             "source": ["crawl-8"], "_generated_tokens": [999], "_vectors": [[0.25]], "input_mentions": ["theirs"]}),
                   tmp_path / "in" / "b.parquet")
    summary = run_job(config(tmp_path / "in", tmp_path / "out"), fake_linking())
    rows = rows_of(tmp_path / "out")
    assert [(r["doc_id"], r["status"], r["source"]) for r in rows] == [
        ("j", "ok", str(tmp_path / "in" / "a.jsonl.gz")), ("p", "ok", str(tmp_path / "in" / "b.parquet"))]
    assert [[m["entity_id"] for m in r["mentions"]] for r in rows] == [["Paris", "Rome"], ["Berlin", "Germany"]]
    assert summary.generated_tokens == 6  # the fake model's tokens (words), not the input's `_generated_tokens`
    j, p = rows
    assert (j["input_input_mentions"], p["input_input_mentions"]) == ('[{"start": 0}]', "5")  # types differ: text
    assert (j["input_mentions"], p["input_mentions"]) == ("mine", "theirs")
    assert (j["input_status"], j["input_source"], j["input_source_row"], j["input_model"], j["input_index"]) == (
        "draft", "crawl-7", "7", "gpt", "3")
    assert (j["input__spans"], j["input__vectors"], j["input__generated_tokens"]) == ("s", "[0.5]", "999")
    assert (p["input_status"], p["input_source"], p["input__generated_tokens"], p["input__vectors"]) == ("new", "crawl-8", "999", "[0.25]")


@pytest.mark.ray
def test_credentials_in_uris_reach_no_row_metric_manifest_or_log(tmp_path, ray_session, caplog):
    """Local URIs carrying secrets in their query (pyarrow's local filesystem ignores the query)."""
    write(tmp_path / "in.jsonl", jsonl_bytes(LINES))
    job = config(f"file://{tmp_path}/in.jsonl?token={SECRET}", f"file://{tmp_path}/out?X-Amz-Signature={SECRET}")
    with caplog.at_level(logging.INFO):
        summary = run_job(job, fake_linking())
    assert summary.documents == 3 and SECRET not in json.dumps(summary.__dict__)
    assert all(SECRET not in json.dumps(row) for row in rows_of(tmp_path / "out"))
    for name in os.listdir(tmp_path / "out"):
        if name.endswith(".json"):
            assert SECRET not in (tmp_path / "out" / name).read_text(), name
    assert SECRET not in caplog.text
