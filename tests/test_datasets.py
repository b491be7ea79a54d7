"""Dataset resolution: names in a data dir (AIDA splits, GERBIL NIF stems) and files by path."""
import pytest

from eval.corpora import dataset_names, load_dataset, load_dataset_file
from eval.nif import to_nif
from onegen.spans import Document, Mention

# a tiny AIDA TSV: one train and one testa document
AIDA = """-DOCSTART- (1 EU)
German\tB\tGerman\tGermany\thttp://en.wikipedia.org/wiki/Germany\t11867\t/m/0345h
call
.

-DOCSTART- (947testa CRICKET)
Leeds\tB\tLeeds\t--NME--
win
.

"""
NIF_DOC = Document("http://example.org/d1#char=0,19", "Paris is in France.",
                   [Mention(0, 5, "Paris", "Paris"), Mention(12, 18, "France", "France")])


@pytest.fixture
def data_dir(tmp_path):
    """A data dir laid out like the bundle: aida/AIDA-YAGO2-dataset.tsv and gerbil/*.ttl."""
    (tmp_path / "aida").mkdir()
    (tmp_path / "aida" / "AIDA-YAGO2-dataset.tsv").write_text(AIDA, encoding="utf-8")
    (tmp_path / "gerbil").mkdir()
    (tmp_path / "gerbil" / "tiny-news.ttl").write_text(to_nif([NIF_DOC]), encoding="utf-8")
    (tmp_path / "gerbil" / "FIXES.tsv").write_text("file\tkind\n", encoding="utf-8")  # not a dataset
    return tmp_path


def test_names_are_aida_splits_then_nif_stems(data_dir):
    assert dataset_names(data_dir) == ["aida-train", "aida-testa", "aida-testb", "tiny-news"]


def test_aida_split_by_name(data_dir):
    [doc] = load_dataset("aida-testa", data_dir)
    assert doc.doc_id == "947testa CRICKET" and doc.mentions == [Mention(0, 5, "Leeds", None)]
    assert [d.doc_id for d in load_dataset("aida-train", data_dir)] == ["1 EU"]
    assert load_dataset("aida-testb", data_dir) == []


def test_nif_by_stem(data_dir):
    assert load_dataset("tiny-news", data_dir) == [NIF_DOC]


def test_unknown_name_lists_valid_names(data_dir):
    with pytest.raises(ValueError, match="unknown dataset 'msnbc'.*aida-train, aida-testa, aida-testb, tiny-news"):
        load_dataset("msnbc", data_dir)


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="data dir not found"):
        load_dataset("aida-testb", tmp_path / "nope")


def test_file_by_extension_or_content(data_dir, tmp_path):
    aida = data_dir / "aida" / "AIDA-YAGO2-dataset.tsv"
    assert [d.doc_id for d in load_dataset_file(aida)] == ["1 EU", "947testa CRICKET"]
    assert [d.doc_id for d in load_dataset_file(aida, split="train")] == ["1 EU"]
    renamed = tmp_path / "aida.conll"  # no known extension: recognised by its -DOCSTART- line
    renamed.write_text(AIDA, encoding="utf-8")
    assert len(load_dataset_file(renamed)) == 2
    nif = data_dir / "gerbil" / "tiny-news.ttl"
    assert load_dataset_file(nif) == [NIF_DOC]
    with pytest.raises(ValueError, match="applies to the AIDA TSV only"):
        load_dataset_file(nif, split="testa")
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        load_dataset_file(tmp_path / "missing.ttl")


def test_bundle_names(shared_data):
    names = dataset_names(shared_data)
    assert names[:3] == ["aida-train", "aida-testa", "aida-testb"]
    assert {"reuters-128", "rss-500", "oke-2015-train", "oke-2015-eval", "oke-2016-train", "msnbc", "ace2004",
            "aquaint"} <= set(names)
    assert len(load_dataset("msnbc", shared_data)) == 20
