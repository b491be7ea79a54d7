"""eval/mention_errors.py: each gold link's span classed against the marked spans, from a candidates file."""
import gzip
import json

from eval.mention_errors import link_class, link_split, main, span_class, split, union
from kb.ids import Redirects
from onegen.spans import Candidate, Document, Mention


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


def toy_candidates(tmp_path, monkeypatch, mentions: list[dict]):
    """A candidates file of one "toy" document (Paris, France as gold links) holding `mentions`."""
    import eval.mention_errors as tool

    doc = Document("d1", "Paris is in France .", [Mention(0, 5, "Paris", "Paris"), Mention(12, 18, "France", "France")])
    monkeypatch.setattr(tool, "load_dataset", lambda name, data_dir: [doc])
    path = tmp_path / "candidates-main.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"dataset": "toy", "doc_id": "d1", "mentions": mentions}) + "\n")
    return path


def test_main_reads_a_candidates_file_and_names_missing_sets(tmp_path, capsys, monkeypatch):
    path = toy_candidates(tmp_path, monkeypatch, [{"start": 0, "end": 5, "surface": "Paris", "candidates": []}])
    assert main(["--candidates", str(path)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == "| toy | OneGen | 2 | 1 (50.0%) | 1 (50.0%) | 0 (0.0%) | 0 (0.0%) | 1 | 0 |"
    assert main(["--candidates", str(path), "--datasets", "toy,msnbc"]) == 2
    assert "no documents of msnbc" in capsys.readouterr().err


def _mention(start, end, surface, entity_id, *candidates):
    return Mention(start, end, surface, entity_id, candidates=[Candidate(c, 0.9 - 0.1 * i) for i, c in enumerate(candidates)])


def test_link_classes_follow_redirects_and_name_where_the_link_was_lost():
    redirects = Redirects({"Yeltsin": "Boris_Yeltsin"})
    assert link_class("Boris_Yeltsin", _mention(0, 13, "Boris Yeltsin", "Yeltsin", "Yeltsin"), redirects) == "linked right"
    assert link_class("Boris_Yeltsin", _mention(0, 13, "Boris Yeltsin", "Boris_Johnson", "Boris_Johnson", "Yeltsin"),
                      redirects) == "wrong entity, gold in top-k"
    assert link_class("Boris_Yeltsin", _mention(0, 13, "Boris Yeltsin", None, "Yeltsin"), redirects) == "NIL, gold in top-k"
    assert link_class("Boris_Yeltsin", _mention(0, 13, "Boris Yeltsin", "Moscow", "Moscow"), redirects) == "gold not retrieved"
    assert link_class("Boris_Yeltsin", _mention(0, 13, "Boris Yeltsin", None), redirects) == "gold not retrieved"


def test_link_split_counts_exact_spans_and_links_elsewhere():
    doc = Document("d", "Boris Yeltsin met Bill Clinton in Moscow .",
                   [Mention(0, 13, "Boris Yeltsin", "Boris_Yeltsin"), Mention(18, 30, "Bill Clinton", "Bill_Clinton"),
                    Mention(34, 40, "Moscow", None)])
    found = {"d": [_mention(0, 13, "Boris Yeltsin", "Boris_Yeltsin", "Boris_Yeltsin"),
                   _mention(18, 22, "Bill", "Bill_Gates", "Bill_Gates"),  # not the gold span: a link elsewhere
                   _mention(34, 40, "Moscow", "Moscow", "Moscow")]}  # NIL gold linked: elsewhere too
    assert link_split([doc], found, Redirects.empty()) == {
        "gold links": 2, "exact": 1, "linked right": 1, "wrong entity, gold in top-k": 0, "NIL, gold in top-k": 0,
        "gold not retrieved": 0, "links elsewhere": 2}


def test_main_prints_the_disambiguation_table_from_the_recorded_decisions(tmp_path, capsys, monkeypatch):
    path = toy_candidates(tmp_path, monkeypatch, [_mention(0, 5, "Paris", None, "Paris").to_dict(),
                                                  _mention(12, 18, "France", "France", "France").to_dict()])
    assert main(["--candidates", str(path), "--data-dir", str(tmp_path)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == "| toy | 2 | 2 (100.0%) | 1 (50.0%) | 0 (0.0%) | 1 (50.0%) | 0 (0.0%) | 0 |"


def test_a_candidates_file_cut_off_mid_run_gives_the_documents_it_holds(tmp_path, capsys):
    from eval.mention_errors import read_candidates

    path = tmp_path / "candidates-main.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(400):
            f.write(json.dumps({"dataset": "toy", "doc_id": f"d{i}", "mentions": [
                _mention(0, 5, "Paris", "Paris", "Paris", f"Other_{i}").to_dict()]}) + "\n")
    path.write_bytes(path.read_bytes()[:-300])  # as a killed run leaves its .partial file
    docs = read_candidates(path)["toy"]
    assert 0 < len(docs) < 400 and docs["d0"][0].entity_id == "Paris"
    assert "ends early" in capsys.readouterr().err


def test_redecide_decides_the_candidates_again_with_a_models_settings(tmp_path, capsys, monkeypatch):
    from onegen.linker_config import LinkerConfig

    path = toy_candidates(tmp_path, monkeypatch, [_mention(0, 5, "Paris", None, "Paris").to_dict(),  # recorded NIL
                                                  _mention(12, 18, "France", "France", "France").to_dict()])
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "aida_train_aliases.tsv").write_text("Paris\tParis\t1\n", encoding="utf-8")
    rows = {}
    for name, threshold in (("low", 0.5), ("high", 1.25)):  # high: over any cosine + alias term (0.2 x 1)
        LinkerConfig(nil_threshold=threshold, popularity_weight=0.0).save(tmp_path / name)  # no KB popularity to read
        assert main(["--candidates", str(path), "--data-dir", str(tmp_path), "--redecide", "--model", str(tmp_path / name)]) == 0
        rows[name] = capsys.readouterr().out.splitlines()[-1]
    assert rows["low"] == "| toy | 2 | 2 (100.0%) | 2 (100.0%) | 0 (0.0%) | 0 (0.0%) | 0 (0.0%) | 0 |"  # both linked right
    assert rows["high"] == "| toy | 2 | 2 (100.0%) | 0 (0.0%) | 0 (0.0%) | 2 (100.0%) | 0 (0.0%) | 0 |"  # both NIL
