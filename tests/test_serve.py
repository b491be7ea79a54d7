"""The NIF annotator web service, exercised with real HTTP requests on 127.0.0.1."""
import http.client
import re
import select
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from rdflib import Literal, URIRef

from eval.nif import ITSRDF, NIF, parse_graph, parse_nif, to_nif
from eval.run_gerbil import main
from eval.serve import ServiceLimits, make_server
from onegen.spans import Document, Mention

MAX_BODY = 4096
MAX_CHARS = 1000
TIMEOUT = 1.0  # seconds: the service's socket and body timeout in these tests
MARGIN = 1.5  # seconds an answer may come after its deadline on a loaded machine
LIMITS = ServiceLimits(max_body=MAX_BODY, max_chars=MAX_CHARS, max_in_flight=16, timeout=TIMEOUT)
NIF_PREFIX = "@prefix nif: <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#> .\n"


class CapitalisedWordLinker:
    """Links every capitalised word to the entity of the same name; "Nobody" is NIL; "Boom" raises."""

    def __init__(self, delay: float = 0.01):
        self.delay = delay  # seconds each call takes
        self.active = 0  # linker calls running right now
        self.max_active = 0  # most calls seen running at once

    def link(self, texts: list[str]) -> list[list[Mention]]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            out = []
            for text in texts:
                if "Boom" in text:
                    raise RuntimeError("the linker exploded")
                out.append([Mention(m.start(), m.end(), m.group(), None if m.group() == "Nobody" else m.group())
                            for m in re.finditer(r"\b[A-Z]\w*", text)])
            return out
        finally:
            self.active -= 1


@contextmanager
def running(linker, limits: ServiceLimits):
    """A server on a free port of 127.0.0.1, serving in a thread until the block ends."""
    srv = make_server("127.0.0.1", 0, linker, limits)  # port 0: a free ephemeral port
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def server():
    with running(CapitalisedWordLinker(), LIMITS) as srv:
        yield srv


def exchange(srv, method="POST", body: bytes = b"", content_type: str | None = "application/x-turtle"):
    """Status, headers and text of the answer to one request on a new connection."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    try:
        conn.request(method, "/", body=body, headers={"Content-Type": content_type} if content_type else {})
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode("utf-8")
    finally:
        conn.close()


def request(srv, method="POST", body: bytes = b"", content_type: str | None = "application/x-turtle"):
    status, headers, text = exchange(srv, method, body, content_type)
    return status, headers.get("Content-Type"), text


def nif_request(text: str, uri: str = "http://example.org/doc1") -> bytes:
    """A GERBIL-style request: one context, no phrases."""
    return to_nif([Document(uri, text)]).encode("utf-8")


def test_post_returns_phrases_for_links(server):
    text = "Yesterday Paris met Nobody in rome."
    status, ctype, body = request(server, body=nif_request(text))
    assert status == 200 and ctype.startswith("application/x-turtle")
    [doc] = parse_nif(body)
    assert doc.doc_id == "http://example.org/doc1" and doc.text == text
    assert [(a.surface, a.entity_id) for a in doc.mentions] == [("Yesterday", "Yesterday"), ("Paris", "Paris"),
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
    assert doc.mentions == [Mention(2, 7, "Paris", "Paris")]


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
    assert status == 200 and [a.surface for a in parse_nif(body)[0].mentions] == ["Still", "Alive"]


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
        assert [a.entity_id for a in doc.mentions] == ["Request", f"City{i}", f"Town{i}"]
    assert server.linker.max_active == 1  # linker calls are serialised


def context_turtle(iri: str, literal: str, more: str = "") -> bytes:
    """A request whose context `iri` has nif:isString `literal` (both as written in Turtle), then `more` Turtle."""
    return (NIF_PREFIX + f"{iri} a nif:Context ; nif:isString {literal} .\n" + more).encode("utf-8")


def request_head(length: int, extra: str = "") -> bytes:
    """Request line and headers of a Turtle POST announcing a body of `length` bytes."""
    return (f"POST / HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-turtle\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode("ascii")


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection; TimeoutError if it does not within the socket timeout."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def connect(srv) -> socket.socket:
    return socket.create_connection(srv.server_address[:2], timeout=TIMEOUT + 5)


def test_200_parallel_requests_answered_200_or_503_none_reset():
    limits = ServiceLimits(max_body=MAX_BODY, max_chars=MAX_CHARS, max_in_flight=4, timeout=5)
    with running(CapitalisedWordLinker(delay=0.02), limits) as srv:

        def post(i):
            try:
                return exchange(srv, body=nif_request(f"Request {i} names City{i}", f"http://example.org/doc{i}"))
            except OSError as e:  # a reset or refused connection
                return e

        with ThreadPoolExecutor(max_workers=200) as pool:
            results = list(pool.map(post, range(200)))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} of 200 requests got no answer, e.g. {errors[0]!r}"
    assert set(Counter(status for status, _, _ in results)) == {200, 503}  # the limit was hit and work went on
    for i, (status, headers, text) in enumerate(results):
        if status == 503:
            assert headers["Retry-After"] == "1" and "busy" in text
        else:
            [doc] = parse_nif(text)
            assert doc.doc_id == f"http://example.org/doc{i}" and [a.entity_id for a in doc.mentions] == ["Request", f"City{i}"]


def test_held_back_body_answered_408_within_timeout(server):
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(request_head(1000) + b"@prefix nif: ")  # 13 of the 1000 bytes announced, then nothing
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408") and b"got 13 of 1000 body bytes" in answer
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + MARGIN


def test_slow_sender_cut_when_the_body_takes_longer_than_timeout(server):
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(request_head(1000))
        while not select.select([sock], [], [], TIMEOUT / 5)[0]:  # one byte each TIMEOUT/5 s: no single read times out
            assert time.monotonic() - start < TIMEOUT + 5, "no answer to a slow sender"
            sock.sendall(b" ")
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408") and elapsed < TIMEOUT + MARGIN


def test_silent_connection_closed_after_timeout(server):
    with connect(server) as sock:
        start = time.monotonic()
        assert read_until_closed(sock) == b""  # nothing sent, nothing answered: just closed
        assert time.monotonic() - start < TIMEOUT + MARGIN


@pytest.mark.parametrize("expect", ["", "Expect: 100-continue\r\n"], ids=["plain", "expect-100-continue"])
def test_over_limit_content_length_413_at_once_without_the_body(server, expect):
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(request_head(10**9, expect))  # headers only: the body is never sent
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 413") and f"over the limit of {MAX_BODY} bytes".encode() in answer
    assert elapsed < TIMEOUT / 2  # at once, not after waiting for the body


def test_over_limit_body_sent_anyway_413_readable(server):
    status, _, body = request(server, body=b"x" * 8_000_000)  # http.client sends all 8 MB before it reads the answer
    assert status == 413 and f"over the limit of {MAX_BODY} bytes" in body


BAD_INPUTS = {  # name: (request body, expected status, part of the expected message)
    "context over max_chars": (context_turtle("<http://example.org/d>", '"' + "a" * (MAX_CHARS + 1) + '"'),
                               413, f"{MAX_CHARS + 1} characters, over the limit of {MAX_CHARS}"),
    "lone high surrogate": (context_turtle("<http://example.org/d>", r'"\uD83D Paris"'), 400, r"lone UTF-16 surrogate \uD83D"),
    "lone low surrogate": (context_turtle("<http://example.org/d>", r'"Paris \uDE00"'), 400, r"lone UTF-16 surrogate \uDE00"),
    "surrogate as a \\U escape": (context_turtle("<http://example.org/d>", r'"\U0000D83D"'), 400, "lone UTF-16 surrogate"),
    "lone surrogate in the context IRI": (context_turtle(r"<http://example.org/d\uD83D>", '"Paris"'), 400, "lone UTF-16 surrogate"),
    "context IRI with a space": (context_turtle("<http://example.org/a b>", '"Paris"'), 400, "percent-encode"),
    "context IRI with an escaped newline": (context_turtle(r"<http://example.org/a\u000Ab>", '"Paris"'), 400, "percent-encode"),
    "entity IRI with a space": (context_turtle("<http://example.org/d>", '"Paris"',
                                               "<http://example.org/d#p> <http://www.w3.org/2005/11/its/rdf#taIdentRef> "
                                               "<http://dbpedia.org/resource/A B> .\n"), 400, "percent-encode"),
    "blank-node context": (context_turtle("[]", '"Paris"'), 400, "blank node"),
    "relative context IRI": (context_turtle("<doc1>", '"Paris"'), 400, "<doc1> is relative"),
    "nif:isString an IRI": (context_turtle("<http://example.org/d>", "<http://example.org/x>"), 400,
                            "expected one string literal"),
    "unbound prefix": (b'ex:d <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#isString> "Paris" .', 400,
                       "not valid Turtle"),
    "unterminated string": (context_turtle("<http://example.org/d>", '"Paris'), 400, "not valid Turtle"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_4xx_with_a_message(server, name):
    body, expected_status, message = BAD_INPUTS[name]
    status, ctype, text = request(server, body=body)
    assert (status, ctype.split(";")[0]) == (expected_status, "text/plain") and message in text, text
    assert len(text.splitlines()) == 1


def test_context_of_max_chars_is_linked(server):
    status, _, body = request(server, body=nif_request("A" + "a" * (MAX_CHARS - 1)))
    assert status == 200 and [a.surface for a in parse_nif(body)[0].mentions] == ["A" + "a" * (MAX_CHARS - 1)]


def test_surrogate_pair_escapes_read_as_one_character(server):
    status, _, body = request(server, body=context_turtle("<http://example.org/d>", r'"\uD83D\uDE00 Paris"'))
    assert status == 200
    [doc] = parse_nif(body)
    assert doc.text == "😀 Paris" and doc.mentions == [Mention(2, 7, "Paris", "Paris")]
    graph = parse_graph(body)
    [phrase] = list(graph.subjects(NIF.anchorOf, Literal("Paris")))
    assert (int(graph.value(phrase, NIF.beginIndex)), int(graph.value(phrase, NIF.endIndex))) == (3, 8)  # UTF-16


def test_limits_must_be_positive_and_the_cli_says_so_in_one_line(capsys):
    with pytest.raises(ValueError, match="max_in_flight must be above 0, got 0"):
        ServiceLimits(max_in_flight=0)
    assert main(["serve", "--linker", "baseline", "--timeout", "0"]) == 2
    assert capsys.readouterr().err == "error: service limit timeout must be above 0, got 0.0\n"
