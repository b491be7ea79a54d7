"""AIDA-CoNLL-YAGO TSV reader."""
import pytest

from eval.aida import SPLITS, read_aida, split_of

SAMPLE = """-DOCSTART- (1 EU)
EU\tB\tEU\t--NME--
rejects
German\tB\tGerman\tGermany\thttp://en.wikipedia.org/wiki/Germany\t11867\t/m/0345h
call
.

Peter\tB\tPeter Blackburn\t--NME--
Blackburn\tI\tPeter Blackburn\t--NME--

-DOCSTART- (947testa CRICKET)
New\tB\tNew York\tNew_York_City\thttp://en.wikipedia.org/wiki/New York City\t645042
York\tI\tNew York\tNew_York_City\thttp://en.wikipedia.org/wiki/New York City\t645042
Paris\tB\tParis\tParis\thttp://en.wikipedia.org/wiki/Paris\t22989\t/m/05qtj
Paris\tB\tParis\tParis\thttp://en.wikipedia.org/wiki/Paris\t22989\t/m/05qtj

-DOCSTART- (1163testb SOCCER)
Beijing\tB\tBeijing\tBeijing\thttp://en.wikipedia.org/wiki/Beijing\t18603746\t/m/01914

"""

AIDA_TABLE = {  # shared/data/aida/README.md: docs, mentions, linked per split
    "train": (946, 23396, 18541),
    "testa": (216, 5917, 4791),
    "testb": (231, 5616, 4485),
}


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "aida.tsv"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


def test_text_rebuilt_with_spaces_and_newlines(sample):
    doc = read_aida(sample)[0]
    assert doc.doc_id == "1 EU"
    assert doc.text == "EU rejects German call .\nPeter Blackburn"


def test_annotations_round_trip_and_ids(sample):
    docs = read_aida(sample)
    got = [(d.doc_id, a.surface, a.entity_id) for d in docs for a in d.mentions]
    assert got == [
        ("1 EU", "EU", None),
        ("1 EU", "German", "Germany"),
        ("1 EU", "Peter Blackburn", None),
        ("947testa CRICKET", "New York", "New_York_City"),  # column 5 with spaces -> underscores
        ("947testa CRICKET", "Paris", "Paris"),
        ("947testa CRICKET", "Paris", "Paris"),  # two adjacent B mentions stay two mentions
        ("1163testb SOCCER", "Beijing", "Beijing"),
    ]
    for d in docs:
        for a in d.mentions:
            assert d.text[a.start:a.end] == a.surface


def test_splits(sample):
    assert [d.doc_id for d in read_aida(sample, "train")] == ["1 EU"]
    assert [d.doc_id for d in read_aida(sample, "testa")] == ["947testa CRICKET"]
    assert [d.doc_id for d in read_aida(sample, "testb")] == ["1163testb SOCCER"]
    assert split_of("1393testb SOCCER") == "testb"
    assert split_of("946 SOCCER") == "train"


def test_unknown_split_lists_choices(sample):
    with pytest.raises(ValueError, match="train, testa, testb"):
        read_aida(sample, "test")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_aida(tmp_path / "missing.tsv")


def test_dangling_inside_tag_is_an_error(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("-DOCSTART- (1 EU)\nthe\nYork\tI\tNew York\t--NME--\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:3: .*'I'"):
        read_aida(path)


@pytest.mark.parametrize("split", SPLITS)
def test_real_file_counts_match_readme(shared_data, split):
    docs = read_aida(shared_data / "aida" / "AIDA-YAGO2-dataset.tsv", split)
    mentions = [a for d in docs for a in d.mentions]
    assert (len(docs), len(mentions), sum(a.entity_id is not None for a in mentions)) == AIDA_TABLE[split]
    for d in docs:
        assert all(d.text[a.start:a.end] == a.surface for a in d.mentions)
