"""The NIF annotator web service, exercised with real HTTP requests on 127.0.0.1."""
import http.client
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rdflib import Literal, URIRef

from eval.nif import ITSRDF, NIF, parse_graph, parse_nif, to_nif
from eval.serve import make_server
from eval.types import Annotation, Document

MAX_BODY = 4096


class CapitalisedWordLinker:
    """Links every capitalised word to the entity of the same name; "Nobody" is NIL; "Boom" raises."""

    def __init__(self):
        self.active = 0  # linker calls running right now
        self.max_active = 0  # most calls seen running at once

    def link(self, texts: list[str]) -> list[list[Annotation]]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(0.01)
            out = []
            for text in texts:
                if "Boom" in text:
                    raise RuntimeError("the linker exploded")
                out.append([Annotation(m.start(), m.end(), m.group(), None if m.group() == "Nobody" else m.group())
                            for m in re.finditer(r"\b[A-Z]\w*", text)])
            return out
        finally:
            self.active -= 1


@pytest.fixture(scope="module")
def server():
    linker = CapitalisedWordLinker()
    srv = make_server("127.0.0.1", 0, linker, max_body=MAX_BODY)  # port 0: a free ephemeral port
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def request(srv, method="POST", body: bytes = b"", content_type: str | None = "application/x-turtle"):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request(method, "/", body=body, headers=headers)
    response = conn.getresponse()
    status, ctype, data = response.status, response.getheader("Content-Type"), response.read()
    conn.close()
    return status, ctype, data.decode("utf-8")


def nif_request(text: str, uri: str = "http://example.org/doc1") -> bytes:
    """A GERBIL-style request: one context, no phrases."""
    return to_nif([Document(uri, text)]).encode("utf-8")


def test_post_returns_phrases_for_links(server):
    text = "Yesterday Paris met Nobody in rome."
    status, ctype, body = request(server, body=nif_request(text))
    assert status == 200 and ctype.startswith("application/x-turtle")
    [doc] = parse_nif(body)
    assert doc.doc_id == "http://example.org/doc1" and doc.text == text
    assert [(a.surface, a.entity_id) for a in doc.annotations] == [("Yesterday", "Yesterday"), ("Paris", "Paris"),
                                                                  ("Nobody", None)]
    graph = parse_graph(body)
    phrase = URIRef("http://example.org/doc1#char=10,15")
    assert graph.value(phrase, NIF.anchorOf) == Literal("Paris")
    assert graph.value(phrase, NIF.referenceContext) == URIRef("http://example.org/doc1")
    assert graph.value(phrase, ITSRDF.taIdentRef) == URIRef("http://dbpedia.org/resource/Paris")
    assert str(graph.value(URIRef("http://example.org/doc1#char=20,26"), ITSRDF.taIdentRef)).startswith(
        "http://aksw.org/notInWiki/")  # NIL written as an emerging entity


def test_offsets_are_utf16_after_non_bmp_character(server):
    text = "😀 Paris"  # the emoji is one code point but two UTF-16 code units
    status, _, body = request(server, body=nif_request(text))
    assert status == 200
    graph = parse_graph(body)
    [phrase] = list(graph.subjects(NIF.anchorOf, Literal("Paris")))
    assert (int(graph.value(phrase, NIF.beginIndex)), int(graph.value(phrase, NIF.endIndex))) == (3, 8)
    [doc] = parse_nif(body)  # and back to code points
    assert doc.annotations == [Annotation(2, 7, "Paris", "Paris")]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_405(server, method):
    status, ctype, body = request(server, method=method, body=b"" if method == "GET" else b"x")
    assert status == 405 and ctype.startswith("text/plain") and "POST" in body


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_wrong_content_type_415(server, content_type):
    status, _, body = request(server, body=nif_request("Paris"), content_type=content_type)
    assert status == 415 and "application/x-turtle" in body


def test_not_turtle_400(server):
    status, _, body = request(server, body=b"this is { not turtle")
    assert status == 400 and "not valid Turtle" in body
    status, _, body = request(server, body=b"\xff\xfe\x00")
    assert status == 400 and "UTF-8" in body


def test_no_context_or_several_contexts_400(server):
    empty = b"@prefix nif: <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#> .\n"
    status, _, body = request(server, body=empty)
    assert status == 400 and "exactly one nif:Context" in body and "got 0" in body
    two = to_nif([Document("http://example.org/a", "Paris"), Document("http://example.org/b", "Rome")]).encode()
    status, _, body = request(server, body=two)
    assert status == 400 and "got 2" in body


def test_too_large_413(server):
    status, _, body = request(server, body=nif_request("Paris " * MAX_BODY))
    assert status == 413 and str(MAX_BODY) in body


def test_linker_exception_500_and_server_keeps_running(server):
    status, ctype, body = request(server, body=nif_request("Boom goes the linker"))
    assert status == 500 and ctype.startswith("text/plain") and "the linker exploded" in body
    status, _, body = request(server, body=nif_request("Still Alive"))
    assert status == 200 and [a.surface for a in parse_nif(body)[0].annotations] == ["Still", "Alive"]


def test_concurrent_requests(server):
    texts = [f"Request {i} mentions City{i} and Town{i}" for i in range(8)]

    def post(i):
        return request(server, body=nif_request(texts[i], f"http://example.org/doc{i}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(post, range(8)))
    for i, (status, _, body) in enumerate(results):
        assert status == 200
        [doc] = parse_nif(body)
        assert doc.doc_id == f"http://example.org/doc{i}"
        assert [a.entity_id for a in doc.annotations] == ["Request", f"City{i}", f"Town{i}"]
    assert server.linker.max_active == 1  # linker calls are serialised
