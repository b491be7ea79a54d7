"""The KB JSONL contract: validation report, duplicate policy, strict mode, atomic write."""
import json

import pytest

from kb.entity import Entity
from kb.jsonl import KbError, iter_kb, read_kb, write_kb

LINES = [
    '{"id": "United_Kingdom", "title": "United Kingdom", "description": "A country.", "popularity": 5}',
    '{"id": "Paris", "description": "", "aliases": ["City of Light"]}',
    "{not json",
    '{"title": "No id here"}',
    '{"id": "United_Kingdom", "title": "Duplicate", "description": "second"}',
    "",
    '{"id": "Berlin", "aliases": "not a list"}',
    '["an", "array"]',
    '{"id": "Rome"}',
]


@pytest.fixture
def kb_file(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_read_reports_every_problem_with_line_numbers(kb_file):
    result = read_kb(kb_file)
    assert [e.id for e in result.entities] == ["United_Kingdom", "Paris", "Rome"]
    uk, paris, rome = result.entities
    assert uk.title == "United Kingdom" and uk.description == "A country." and uk.popularity == 5
    assert paris.title == "Paris" and paris.aliases == ["City of Light"]  # title defaults from the id
    report = result.report
    assert (report.lines, report.entities, report.bad_lines, report.missing_ids) == (8, 3, 3, 1)
    assert report.duplicates == {"United_Kingdom": 1} and report.empty_descriptions == 2
    assert not report.ok
    joined = " | ".join(report.examples)
    assert "line 3: bad JSON" in joined and "line 4: missing id" in joined
    assert "line 5: duplicate id 'United_Kingdom' (first on line 1)" in joined
    assert "line 7:" in joined and "line 8:" in joined
    assert "3 entities from 8 lines" in report.summary()


def test_duplicate_error_and_strict_mode(kb_file, tmp_path):
    with pytest.raises(KbError, match=r"kb.jsonl:3: bad JSON"):
        read_kb(kb_file, strict=True)
    clean = tmp_path / "dups.jsonl"
    clean.write_text(LINES[0] + "\n" + LINES[4] + "\n", encoding="utf-8")
    assert read_kb(clean, strict=True).entities[0].title == "United Kingdom"  # first wins
    with pytest.raises(KbError, match=r"dups.jsonl:2: duplicate id 'United_Kingdom', first on line 1"):
        read_kb(clean, on_duplicate="error")
    with pytest.raises(ValueError, match="on_duplicate must be one of"):
        read_kb(clean, on_duplicate="last")
    with pytest.raises(FileNotFoundError, match="KB file not found"):
        read_kb(tmp_path / "missing.jsonl")


def test_a_file_with_no_entity_is_refused_as_a_kb(tmp_path):
    """A corpus passed as the KB (every line without "id") or an empty file: an error naming the file, not an
    empty index that links nothing."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"doc_id": "d1", "text": "Paris."}\n{"doc_id": "d2", "text": "Rome."}\n', encoding="utf-8")
    with pytest.raises(KbError, match=r"corpus.jsonl holds no KB entity \(2 lines; first problems: line 1: missing id"):
        read_kb(corpus)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(KbError, match=r"empty.jsonl holds no KB entity \(0 lines\)"):
        list(iter_kb(tmp_path / "empty.jsonl"))


def test_iter_kb_streams_and_fills_the_report(kb_file):
    from kb.jsonl import KbReport

    report = KbReport(path=str(kb_file))
    stream = iter_kb(kb_file, report=report)
    assert next(stream).id == "United_Kingdom" and report.entities == 1
    assert [e.id for e in stream] == ["Paris", "Rome"] and report.entities == 3


def test_write_round_trips_and_is_atomic(tmp_path):
    entities = [Entity("Zürich", "Zürich", "Stadt", ["Zurich"], 3), Entity("Rome", "Rome")]
    path = tmp_path / "out" / "kb.jsonl"
    assert write_kb(entities, path) == 2
    assert read_kb(path).entities == entities
    assert "Zürich" in path.read_text(encoding="utf-8")  # non-ASCII kept as is
    assert json.loads(path.read_text().splitlines()[1]) == {"id": "Rome", "title": "Rome", "description": "", "aliases": [], "popularity": 0}

    def failing():
        yield Entity("A", "A")
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_kb(failing(), path)
    assert read_kb(path).entities == entities  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == ["kb.jsonl"]  # no temporary left behind
