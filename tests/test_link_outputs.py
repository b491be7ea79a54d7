"""Link job output side: atomic part files, resume state, incremental manifest, output schema."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onegen.pipeline.outputs import (MENTIONS_TYPE, AtomicParquetSink, Output, RunManifest, atomic_write, done_rows,
                                     drop_sources, part_name)


def block(source: str, rows: list[int], mentions=None) -> pa.Table:
    n = len(rows)
    mentions = mentions or [[] for _ in rows]
    return pa.table({
        "doc_id": [f"{source}-{r}" for r in rows], "mentions": pa.array(mentions, MENTIONS_TYPE),
        "status": ["ok"] * n, "error": pa.array([None] * n, pa.string()), "text": ["Paris"] * n,
        "source": [source] * n, "source_row": pa.array(rows, pa.int64()), "_generated_tokens": pa.array([3] * n, pa.int64()),
    })


def visible(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_failed_write_leaves_nothing_visible(tmp_path):
    output = Output.from_uri(str(tmp_path / "out"))

    def half_then_crash(stream):
        stream.write(b"PAR1 half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(output.filesystem, output.join("part-x.parquet"), half_then_crash)
    assert list((tmp_path / "out").iterdir()) == []


def test_sink_writes_one_complete_part_per_task_and_counts(tmp_path):
    output = Output.from_uri(str(tmp_path / "out"))
    sink = AtomicParquetSink(output)
    mention = {"start": 0, "end": 5, "surface": "Paris", "entity_id": "Paris", "score": 0.9,
               "candidates": [{"entity_id": "Paris", "score": 0.9}]}
    nil = dict(mention, entity_id=None)
    stats = sink.write([block("a.jsonl", [1, 2], [[mention, nil], []]), block("a.jsonl", [3])], ctx=None)
    assert stats == {"documents": 3, "errors": 0, "mentions": 2, "linked": 1, "characters": 15, "generated_tokens": 9}
    assert visible(tmp_path / "out") == [part_name(block("a.jsonl", [1, 2, 3]))]
    table = pq.read_table(tmp_path / "out")
    assert "_generated_tokens" not in table.column_names and table.num_rows == 3
    assert table.column("mentions").to_pylist()[0][0]["candidates"] == [{"entity_id": "Paris", "score": pytest.approx(0.9)}]


def test_part_names_depend_only_on_rows_so_retries_replace(tmp_path):
    assert part_name(block("a", [1, 2])) == part_name(block("a", [1, 2]))
    assert part_name(block("a", [1, 2])) != part_name(block("a", [1, 3]))
    output = Output.from_uri(str(tmp_path))
    for _ in range(2):
        AtomicParquetSink(output).write([block("a", [1, 2])], ctx=None)
    assert len(output.parts()) == 1


def test_done_rows_and_drop_sources(tmp_path):
    output = Output.from_uri(str(tmp_path))
    sink = AtomicParquetSink(output)
    sink.write([block("a", [1, 2]), block("b", [1])], ctx=None)
    sink.write([block("b", [2])], ctx=None)
    assert done_rows(output) == {"a": {1, 2}, "b": {1, 2}}
    assert drop_sources(output, {"b"}) == 2
    assert done_rows(output) == {"a": {1, 2}} and len(output.parts()) == 1


def test_manifest_round_trip_and_finish(tmp_path):
    output = Output.from_uri(str(tmp_path))
    assert RunManifest.load(output) is None
    manifest = RunManifest("run1", False, "m", "i", {"top_k": 10}, "in/", files={"a": {"size": 3, "sha256": "x"}},
                        pending={"b": {"size": 4, "sha256": "y"}})
    manifest.save(output)
    assert RunManifest.load(output) == manifest
    manifest.finish()
    assert (manifest.complete, manifest.pending, sorted(manifest.files)) == (True, {}, ["a", "b"])
    assert visible(tmp_path) == ["_manifest.json"]
