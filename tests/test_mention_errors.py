"""eval/mention_errors.py: each gold link's span classed against the marked spans, from a candidates file."""
import gzip
import json

from eval.mention_errors import main, span_class, split, union
from onegen.spans import Document, Mention


def test_span_classes():
    gold = (10, 26)  # "Cambridge United"
    assert span_class(gold, [(0, 4), (10, 26)]) == "exact"
    assert span_class(gold, [(0, 4), (30, 35)]) == "not marked"
    assert span_class(gold, [(10, 19), (20, 26)]) == "in pieces or shorter"
    assert span_class(gold, [(10, 19)]) == "in pieces or shorter"
    assert span_class(gold, [(0, 26)]) == "longer or shifted"  # "President Cambridge United"
    assert span_class(gold, [(15, 30)]) == "longer or shifted"
    assert span_class(gold, [(10, 19), (18, 30)]) == "longer or shifted"  # one piece reaches outside


def test_union_adds_only_ner_spans_that_overlap_no_model_span():
    assert union([(0, 5), (10, 20)], [(0, 5), (12, 14), (30, 40), (18, 25)]) == [(0, 5), (10, 20), (30, 40)]


def test_split_counts_gold_links_and_spurious_spans():
    text = "Boris Yeltsin met Bill Clinton in Moscow on Monday ."
    doc = Document("d", text, [Mention(0, 13, "Boris Yeltsin", "Boris_Yeltsin"),
                               Mention(18, 30, "Bill Clinton", "Bill_Clinton"),
                               Mention(34, 40, "Moscow", None)])  # NIL gold: not a gold link
    spans = {"d": [(0, 13), (18, 22), (34, 40), (44, 50)]}  # Yeltsin exact, "Bill" short, Moscow, "Monday"
    counts = split([doc], spans)
    assert counts == {"gold links": 2, "exact": 1, "not marked": 0, "in pieces or shorter": 1,
                      "longer or shifted": 0, "spans": 4, "spurious": 1}  # Moscow overlaps the NIL gold


def test_main_reads_a_candidates_file_and_names_missing_sets(tmp_path, capsys, monkeypatch):
    import eval.mention_errors as tool

    doc = Document("d1", "Paris is in France .", [Mention(0, 5, "Paris", "Paris"), Mention(12, 18, "France", "France")])
    monkeypatch.setattr(tool, "load_dataset", lambda name, data_dir: [doc])
    path = tmp_path / "candidates-main.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"dataset": "toy", "doc_id": "d1", "mentions": [
            {"start": 0, "end": 5, "surface": "Paris", "candidates": []}]}) + "\n")
    assert main(["--candidates", str(path)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == "| toy | OneGen | 2 | 1 (50.0%) | 1 (50.0%) | 0 (0.0%) | 0 (0.0%) | 1 | 0 |"
    assert main(["--candidates", str(path), "--datasets", "toy,msnbc"]) == 2
    assert "no documents of msnbc" in capsys.readouterr().err
