"""bench/respan.py: a change of span settings measured by relinking only the documents whose spans it changes."""
import gzip
import json
import sys
from pathlib import Path

import pytest

from eval.nif import to_nif
from onegen.spans import Document, Mention

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import respan  # noqa: E402

TEXTS = {"d1": "He was born in Long Beach, California, and moved to Utah.", "d2": "Utah is far from Paris."}
KB = ["Long_Beach,_California", "California", "Utah", "Paris"]


def spans(text, *words):
    return [{"start": text.index(w), "end": text.index(w) + len(w), "surface": w, "source": source, "entity_id": None,
             "score": 0.5, "candidates": [["Utah", 0.5]]} for w, source in words]


@pytest.fixture
def run(tmp_path):
    """A data dir with one dataset, an index of a tiny model over a four-entity KB, and a run's candidates file: the
    model marked "Long Beach" and "Utah", the NER added "California" (d1); d2 as the NER and the model marked it."""
    from kb.index import EntityIndex
    from kb.jsonl import read_kb
    from onegen.model import OneGen
    from tiny import tiny_model, tiny_tokenizer

    (tmp_path / "kb").mkdir()
    (tmp_path / "gerbil").mkdir()
    (tmp_path / "kb" / "aida_train_aliases.tsv").write_text("", encoding="utf-8")
    (tmp_path / "kb" / "redirects.tsv").write_text("", encoding="utf-8")
    docs = [Document(doc_id, text, [Mention(0, 4, "Utah", "Utah")] if doc_id == "d2" else []) for doc_id, text in TEXTS.items()]
    (tmp_path / "gerbil" / "tiny.ttl").write_text(to_nif(docs), encoding="utf-8")
    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps({"id": e, "title": e.replace("_", " ")}) + "\n" for e in KB), encoding="utf-8")
    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(tmp_path / "model")
    onegen = OneGen.from_pretrained(str(tmp_path / "model"), device="cpu")
    entities = read_kb(kb).entities
    EntityIndex.build(tmp_path / "index", [e.id for e in entities], onegen.embed_entities(entities),
                      fingerprint=onegen.fingerprint())
    doc_ids = {d.doc_id.split("/")[-1].split("#")[0]: d.doc_id for d in docs}
    rows = [{"dataset": "tiny", "doc_id": doc_ids["d1"],
             "mentions": spans(TEXTS["d1"], ("Long Beach", "model"), ("California", "ner"), ("Utah", "model"))},
            {"dataset": "tiny", "doc_id": doc_ids["d2"], "mentions": spans(TEXTS["d2"], ("Utah", "ner"), ("Paris", "model"))}]
    with gzip.open(tmp_path / "candidates-main.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return tmp_path, rows


def read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_only_the_documents_a_span_setting_changes_are_relinked_both_ways(run, capsys):
    folder, rows = run
    respan.main(["--candidates", str(folder / "candidates-main.jsonl.gz"), "--index", str(folder / "index"),
                 "--model", str(folder / "model"), "--out", str(folder / "out"), "--split-spans", "--data-dir", str(folder)])
    main, baseline = read(folder / "out" / "candidates-main.jsonl.gz"), read(folder / "out" / "candidates-baseline.jsonl.gz")
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["candidates-baseline.jsonl.gz", "candidates-main.jsonl.gz"]
    # d1: the joined title replaces its pieces; both ways relinked against the index (four candidates, real cosines)
    assert [(m["surface"], m["source"]) for m in main[0]["mentions"]] == [("Long Beach, California", "ner"), ("Utah", "model")]
    assert [(m["surface"], m["source"]) for m in baseline[0]["mentions"]] == [
        ("Long Beach", "model"), ("California", "ner"), ("Utah", "model")]
    assert all(len(m["candidates"]) == 4 and m["candidates"] != [["Utah", 0.5]] for r in (main[0], baseline[0])
               for m in r["mentions"])
    assert main[1] == baseline[1] == rows[1]  # d2: its spans do not change, so the run's candidates stay
    assert "2 documents: 1 relinked both ways; 0 whose spans" in capsys.readouterr().out


def test_the_file_can_stand_for_the_baseline_and_datasets_can_be_picked(run, capsys):
    folder, rows = run
    common = ["--candidates", str(folder / "candidates-main.jsonl.gz"), "--index", str(folder / "index"),
              "--model", str(folder / "model"), "--split-spans", "--data-dir", str(folder)]
    respan.main(common + ["--out", str(folder / "kept"), "--keep-baseline"])
    assert read(folder / "kept" / "candidates-baseline.jsonl.gz") == rows  # not relinked
    assert read(folder / "kept" / "candidates-main.jsonl.gz")[0]["mentions"][0]["surface"] == "Long Beach, California"
    assert "1 relinked with the new settings" in capsys.readouterr().out
    respan.main(common + ["--out", str(folder / "none"), "--datasets", "aida-testa"])
    assert read(folder / "none" / "candidates-main.jsonl.gz") == []
