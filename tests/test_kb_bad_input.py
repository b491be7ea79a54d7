"""Bad KB lines and damaged index files are refused in one line, before they can make an index that never loads."""
import json

import numpy as np
import pytest

from kb.index import EntityIndex
from kb.jsonl import KbError, read_kb
from kb.manifest import MANIFEST_NAME, IndexCorruptError, Manifest

FINGERPRINT = {"model": "tiny-test", "weights_sha256": "a" * 64, "tokenizer_sha256": "b" * 64}
# every character str.splitlines() splits on, and \r\n; ids.txt is read back with splitlines
LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def write_lines(path, objects) -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")


def unit_vectors(n, dim=8):
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=[f"U+{ord(b[0]):04X}{'+LF' if len(b) > 1 else ''}" for b in LINE_BREAKS])
def test_an_id_with_a_line_break_is_a_bad_line_and_the_index_loads(tmp_path, brk):
    kb = tmp_path / "kb.jsonl"
    write_lines(kb, [{"id": "Paris"}, {"id": f"Rome{brk}Italy"}, {"id": "Berlin"}])
    result = read_kb(kb)
    assert [e.id for e in result.entities] == ["Paris", "Berlin"]
    assert result.report.bad_lines == 1 and "line 2:" in result.report.examples[0] and "one line" in result.report.examples[0]
    with pytest.raises(KbError, match=r"kb.jsonl:2: \"id\" must be one line"):
        read_kb(kb, strict=True)
    ids = [e.id for e in result.entities]
    EntityIndex.build(tmp_path / "index", ids, unit_vectors(len(ids)), fingerprint=FINGERPRINT)
    assert list(EntityIndex.load(tmp_path / "index", FINGERPRINT).shards[0].ids) == ids  # loads, now and every time


@pytest.mark.parametrize("brk", ["\r", "\x85", "\u2028", "\x1e"])
def test_writing_a_shard_refuses_ids_it_could_not_read_back(tmp_path, brk):
    ids = ["Paris", f"Rome{brk}Italy", "Berlin"]
    with pytest.raises(ValueError, match="hold no line break"):
        EntityIndex.build(tmp_path / "index", ids, unit_vectors(3), fingerprint=FINGERPRINT, num_shards=2)
    assert not (tmp_path / "index" / MANIFEST_NAME).exists() and not list(tmp_path.glob("index/shard-*"))


@pytest.mark.parametrize("line", ['{"id": "A", "popularity": 1e400}', '{"id": "A", "popularity": -1e400}',
                                  '{"id": "A", "popularity": NaN}', '{"id": "A", "popularity": -3}'])
def test_a_popularity_that_is_no_finite_count_is_a_bad_line(tmp_path, line):
    kb = tmp_path / "kb.jsonl"
    kb.write_text(f'{{"id": "B", "popularity": 7}}\n{line}\n{{"id": "C", "popularity": 2.9}}\n', encoding="utf-8")
    result = read_kb(kb)
    assert [(e.id, e.popularity) for e in result.entities] == [("B", 7), ("C", 2)]
    assert result.report.bad_lines == 1 and "finite number >= 0" in result.report.examples[0]
    with pytest.raises(KbError, match=r"kb.jsonl:2: \"popularity\" must be a finite number >= 0"):
        read_kb(kb, strict=True)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"version": 1}', '{"version": 1, "index": {"kind": "flat"}}'],
                         ids=["not-json", "not-an-object", "no-fields", "missing-fields"])
def test_a_damaged_manifest_is_one_line_naming_the_file_and_the_rebuild(tmp_path, text):
    (tmp_path / MANIFEST_NAME).write_text(text, encoding="utf-8")
    with pytest.raises(IndexCorruptError) as refused:
        Manifest.read(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / MANIFEST_NAME) in message
    assert f"python jobs/build_index.py --kb KB.jsonl --out {tmp_path}" in message
