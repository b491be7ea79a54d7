"""NIF 2.0 Turtle reading and writing."""
import logging

import pytest

from eval.nif import NifError, codepoint_index, parse_nif, read_nif, to_nif, utf16_index
from onegen.spans import Document, Mention

PREFIXES = """@prefix nif: <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#> .
@prefix itsrdf: <http://www.w3.org/2005/11/its/rdf#> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
"""


def _context(uri: str, text: str) -> str:
    return f'<{uri}#char=0,{len(text)}> a nif:Context ; nif:isString "{text}" .\n'


def _phrase(uri: str, text_len: int, begin: int, end: int, anchor: str, ref: str | None) -> str:
    ident = f" ; itsrdf:taIdentRef <{ref}>" if ref else ""
    return (f'<{uri}#char={begin},{end}> nif:anchorOf "{anchor}" ; nif:beginIndex "{begin}"^^xsd:nonNegativeInteger ; '
            f'nif:endIndex "{end}"^^xsd:nonNegativeInteger ; nif:referenceContext <{uri}#char=0,{text_len}>{ident} .\n')


TEXT = "Paris is in France near Lyon."
DOC = "http://example.org/d1"


def test_contexts_phrases_and_entities():
    ttl = PREFIXES + _context(DOC, TEXT) + _phrase(DOC, len(TEXT), 12, 18, "France", "http://dbpedia.org/resource/France") \
        + _phrase(DOC, len(TEXT), 0, 5, "Paris", "http://en.wikipedia.org/wiki/Paris") \
        + _phrase(DOC, len(TEXT), 24, 28, "Lyon", "http://aksw.org/notInWiki/Lyon")
    [doc] = parse_nif(ttl)
    assert doc.doc_id == f"{DOC}#char=0,{len(TEXT)}"
    assert doc.text == TEXT
    assert doc.mentions == [Mention(0, 5, "Paris", "Paris"), Mention(12, 18, "France", "France"),
                               Mention(24, 28, "Lyon", None)]  # sorted by offsets, notInWiki is NIL


def test_oke_individual_followed_through_same_as():
    oke = "http://www.ontologydesignpatterns.org/data/oke-challenge/task-1/"
    ttl = PREFIXES + _context(DOC, TEXT) + _phrase(DOC, len(TEXT), 0, 5, "Paris", oke + "Paris") \
        + _phrase(DOC, len(TEXT), 24, 28, "Lyon", oke + "Lyon") \
        + f"<{oke}Paris> owl:sameAs <http://dbpedia.org/resource/Paris> .\n"
    [doc] = parse_nif(ttl)
    assert [(a.surface, a.entity_id) for a in doc.mentions] == [("Paris", "Paris"), ("Lyon", None)]


def test_documents_sorted_by_uri():
    ttl = PREFIXES + _context("http://example.org/b", "B text") + _context("http://example.org/a", "A text")
    assert [d.text for d in parse_nif(ttl)] == ["A text", "B text"]


def test_bad_turtle_names_file_and_line(tmp_path):
    path = tmp_path / "broken.ttl"
    path.write_text(PREFIXES + _context(DOC, TEXT) + "<http://x> nif:anchorOf \"unterminated .\n", encoding="utf-8")
    with pytest.raises(NifError, match=r"broken.ttl: not valid Turtle.*line"):
        read_nif(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ttl"):
        read_nif(tmp_path / "nothing.ttl")


def test_anchor_mismatch_is_an_error_naming_document_and_phrase():
    ttl = PREFIXES + _context(DOC, TEXT) + _phrase(DOC, len(TEXT), 0, 5, "Paris", None) \
        + _phrase(DOC, len(TEXT), 12, 17, "France", "http://dbpedia.org/resource/France")
    with pytest.raises(NifError, match=rf"document {DOC}#char=0,29: phrase {DOC}#char=12,17 has anchorOf 'France'"):
        parse_nif(ttl)


def test_anchor_mismatch_skipped_with_warning(caplog):
    ttl = PREFIXES + _context(DOC, TEXT) + _phrase(DOC, len(TEXT), 0, 5, "Paris", None) \
        + _phrase(DOC, len(TEXT), 12, 17, "France", "http://dbpedia.org/resource/France")
    with caplog.at_level(logging.WARNING, logger="eval.nif"):
        [doc] = parse_nif(ttl, skip_bad=True)
    assert doc.mentions == [Mention(0, 5, "Paris", None)]  # no taIdentRef -> NIL
    assert "France" in caplog.text


def test_phrase_outside_text_is_an_error():
    ttl = PREFIXES + _context(DOC, TEXT) + _phrase(DOC, len(TEXT), 25, 40, "Lyon.", None)
    with pytest.raises(NifError, match="bad offsets"):
        parse_nif(ttl)


def test_utf16_index_conversion():
    text = "a😀b"  # the emoji is 1 code point, 2 UTF-16 code units
    assert [utf16_index(text, i) for i in range(4)] == [0, 1, 3, 4]
    assert [codepoint_index(text, u) for u in (0, 1, 3, 4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="surrogate pair"):
        codepoint_index(text, 2)
    with pytest.raises(ValueError, match="outside"):
        codepoint_index(text, 5)


def test_to_nif_round_trip_with_non_bmp_text():
    text = "I 😀 Paris and 🇫🇷 France, not Lyon."
    paris, france, lyon = text.index("Paris"), text.index("France"), text.index("Lyon")
    docs = [
        Document("http://example.org/emoji", text, [
            Mention(paris, paris + 5, "Paris", "Paris"),
            Mention(france, france + 6, "France", "France"),
            Mention(lyon, lyon + 4, "Lyon", None),
        ]),
        # an AIDA-style id (not a URI) and an entity id with characters that must be percent-encoded
        Document("1163testb SOCCER", 'Café "AT&T" 100%', [Mention(5, 11, '"AT&T"', '"AT&T"_100%_Café#Section')]),
    ]
    turtle = to_nif(docs)
    # offsets in the Turtle are UTF-16: "Paris" starts after "I ", the 2-unit emoji and " "
    assert f'nif:beginIndex "{paris + 1}"^^xsd:nonNegativeInteger' in turtle
    # entity IRIs: non-ASCII letters kept, quotes, %, # percent-encoded; NIL as notInWiki
    assert "<http://dbpedia.org/resource/%22AT&T%22_100%25_Café%23Section>" in turtle
    assert "<http://aksw.org/notInWiki/Lyon>" in turtle
    assert sorted(parse_nif(turtle), key=lambda d: d.text) == sorted(docs, key=lambda d: d.text)


@pytest.mark.parametrize("name, docs, phrases, linked, nil", [
    ("reuters-128", 128, 880, 650, 230),
    ("rss-500", 500, 1000, 524, 476),
    ("oke-2015-train", 95, 341, 305, 36),
    ("oke-2015-eval", 101, 665, 536, 129),
    ("oke-2016-train", 196, 1051, 875, 176),
    ("msnbc", 20, 739, 656, 83),
    ("ace2004", 57, 306, 257, 49),
    ("aquaint", 50, 727, 727, 0),
])
def test_gerbil_files_match_readme_counts(shared_data, name, docs, phrases, linked, nil):
    read = read_nif(shared_data / "gerbil" / f"{name}.ttl")
    annotations = [a for d in read for a in d.mentions]
    n_linked = sum(a.entity_id is not None for a in annotations)
    assert (len(read), len(annotations), n_linked, len(annotations) - n_linked) == (docs, phrases, linked, nil)
