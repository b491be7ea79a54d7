"""Canonical entity ids and the redirects table."""
import pytest

from kb.ids import Redirects, canonical_id


@pytest.mark.parametrize("ref, expected", [
    ("http://en.wikipedia.org/wiki/United_Kingdom", "United_Kingdom"),
    ("https://en.wikipedia.org/wiki/People's_Republic_of_China", "People's_Republic_of_China"),
    ("http://dbpedia.org/resource/Field-effect_transistor", "Field-effect_transistor"),
    ("http://dbpedia.org/resource/Caf%C3%A9_de_Flore", "Café_de_Flore"),  # percent-decoded
    ("http://dbpedia.org/resource/AT%26T", "AT&T"),
    ("http://en.wikipedia.org/wiki/New York City", "New_York_City"),  # AIDA column 5 is not encoded
    ("http://de.dbpedia.org/resource/Lohn_(Eschweiler)", "Lohn_(Eschweiler)"),  # German title kept
    ("http://de.dbpedia.org/resource/Cocoa_Producers’_Alliance", "Cocoa_Producers’_Alliance"),
    ("iPhone", "IPhone"),  # first character upper-cased
    ("united kingdom", "United_kingdom"),  # only the first character
    ("e\u0301cole", "École"),  # NFC: e + combining acute -> é, then upper-cased
    ("ßtest", "ßtest"),  # upper("ß") is two letters: kept
    ('"Weird_Al"_Yankovic', '"Weird_Al"_Yankovic'),  # quotes are title characters
])
def test_canonical_id_maps_urls_uris_and_titles(ref, expected):
    assert canonical_id(ref) == expected


@pytest.mark.parametrize("ref", [
    "http://aksw.org/notInWiki/Thermo-Print_GmbH",
    "http://aksw.org/notInWiki",
    "http://www.ontologydesignpatterns.org/data/oke-challenge/task-1/Student",
    "http://fr.dbpedia.org/resource/Paris",
    "urn:x:Paris",
    "",
])
def test_canonical_id_other_uris_are_nil(ref):
    assert canonical_id(ref) is None


def test_canonical_id_is_idempotent():
    for ref in ["http://dbpedia.org/resource/Caf%C3%A9", "new york", "AT&T"]:
        once = canonical_id(ref)
        assert canonical_id(once) == once


def _redirects(tmp_path, lines: list[str]) -> Redirects:
    path = tmp_path / "redirects.tsv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Redirects.from_tsv(path)


def test_redirects_follow_chains(tmp_path):
    r = _redirects(tmp_path, ["A\tB", "B\tC", "C\tD", "X\tD"])
    assert [r.resolve(x) for x in "ABCDX"] == ["D", "D", "D", "D", "D"]
    assert r.resolve("Unrelated") == "Unrelated"


def test_redirects_cycle_resolves_to_one_member(tmp_path):
    r = _redirects(tmp_path, ["A\tB", "B\tC", "C\tA", "Z\tB"])
    targets = {r.resolve(x) for x in "ABCZ"}
    assert targets == {"A"}  # the smallest member of the cycle, the same from everywhere


def test_redirects_keep_quotes_and_canonicalise(tmp_path):
    r = _redirects(tmp_path, ['"George_Simenon"\tGeorges_Simenon', "new york\tNew_York_City"])
    assert r.resolve('"George_Simenon"') == "Georges_Simenon"
    assert r.resolve("New_york") == "New_York_City"
    assert len(r) == 2


def test_redirects_first_mapping_wins(tmp_path):
    r = _redirects(tmp_path, ["A\tB", "A\tC"])
    assert r.resolve("A") == "B"


def test_redirects_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        Redirects.from_tsv(tmp_path / "nope.tsv")
    with pytest.raises(ValueError, match=r"redirects.tsv:2: expected 2 tab-separated columns"):
        _redirects(tmp_path, ["A\tB", "only one column"])


def test_redirects_empty_is_identity():
    assert Redirects.empty().resolve("Paris") == "Paris"


def test_shared_redirects_table(shared_data):
    r = Redirects.from_tsv(shared_data / "kb" / "redirects.tsv")
    assert len(r) == 35731
    assert r.resolve('"George_Simenon"') == "Georges_Simenon"
    # the table has 2-cycles (e.g. China <-> People's_Republic_of_China): both ends compare equal
    assert r.resolve("China") == r.resolve("People's_Republic_of_China")
