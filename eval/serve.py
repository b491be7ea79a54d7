"""A GERBIL-compatible NIF annotator web service around any linker (`linker.link(texts) -> annotations`).

POST a NIF 2.0 Turtle document (`Content-Type: application/x-turtle` or `text/turtle`) with
exactly one `nif:Context`; the answer is the same graph plus one `nif:Phrase` per annotation
(`nif:anchorOf`, `nif:beginIndex`/`nif:endIndex` in UTF-16 code units as GERBIL counts them,
`nif:referenceContext`, `itsrdf:taIdentRef`). Linked entities are written as
`http://dbpedia.org/resource/<id>` (characters not allowed in an IRI percent-encoded); NIL
annotations are written with an `http://aksw.org/notInWiki/<surface>` URI, which GERBIL
scores as emerging entities (EE) and leaves out of the InKB scores.

Errors are plain-text 4xx answers: 400 (not UTF-8 / not Turtle, no or several contexts,
bad Content-Length), 405 (other methods than POST), 411 (no Content-Length), 413 (body over
`max_body` bytes), 415 (other content types); a failing linker gives 500. No request stops
the server. Requests are parsed in parallel threads; calls to the linker are serialised with a
lock, because models are not safe to call from several threads at once.
"""
from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from eval.nif import NIF, NifError, add_annotations, parse_graph
from eval.types import Annotation

LOG = logging.getLogger(__name__)

TURTLE_TYPES = ("application/x-turtle", "text/turtle")  # accepted request content types
MAX_BODY = 10 * 1024 * 1024  # default largest request body in bytes
DRAIN_LIMIT = 256 * 1024  # bytes of a refused body read and dropped, so closing does not reset the connection


class RequestError(Exception):
    """A request the service refuses: HTTP status and a message for the client."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class AnnotatorServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the linker, its lock and the body size limit."""

    daemon_threads = True  # request threads do not keep the process alive

    def __init__(self, address: tuple[str, int], linker, max_body: int = MAX_BODY):
        super().__init__(address, NifAnnotatorHandler)
        self.linker = linker  # any object with link(texts: list[str]) -> list[list[Annotation]]
        self.max_body = max_body  # bodies above this many bytes get 413
        self.linker_lock = threading.Lock()  # one linker call at a time


def _check_annotations(text: str, result) -> list[Annotation]:
    """The linker's annotations for one text, checked against the text."""
    if not isinstance(result, list) or len(result) != 1:
        raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                           f"linker returned {result!r:.200}; expected a list holding one list of annotations")
    for a in result[0]:
        if not (0 <= a.start < a.end <= len(text)):
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                               f"linker returned an annotation with span ({a.start}, {a.end}) outside the text (length {len(text)})")
    return result[0]


class NifAnnotatorHandler(BaseHTTPRequestHandler):
    """Answers POSTed NIF documents with the linker's annotations added."""

    server: AnnotatorServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        try:
            body = self._annotate()
        except RequestError as e:
            self._send(e.status, (str(e) + "\n").encode("utf-8"), "text/plain; charset=utf-8")
        except Exception as e:  # a bug must not stop the server: answer 500 and keep serving
            LOG.exception("request failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {e}\n".encode("utf-8"),
                       "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.OK, body, "application/x-turtle; charset=utf-8")

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed; POST a NIF Turtle document\n".encode(),
                   "text/plain; charset=utf-8", {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse_method

    def _read_body(self) -> bytes:
        content_type = self.headers.get_content_type()  # lower-cased, parameters removed; text/plain if missing
        if self.headers.get("Content-Type") is None or content_type not in TURTLE_TYPES:
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"content type {self.headers.get('Content-Type')!r} not supported; send {' or '.join(TURTLE_TYPES)}")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length header required")
        try:
            size = int(length)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}; expected a byte count") from None
        if size < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {size}; expected a byte count")
        if size > self.server.max_body:
            self.rfile.read(min(size, DRAIN_LIMIT))  # unread data at close would make the client see a reset
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body of {size} bytes is over the limit of {self.server.max_body} bytes")
        return self.rfile.read(size)

    def _annotate(self) -> bytes:
        data = self._read_body()
        try:
            turtle = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not UTF-8: {e}") from None
        try:
            graph = parse_graph(turtle, source="request body")
        except NifError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None
        contexts = sorted(set(graph.subjects(NIF.isString, None)))
        if len(contexts) != 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"expected exactly one nif:Context with nif:isString, got {len(contexts)}")
        context = contexts[0]
        texts = list(graph.objects(context, NIF.isString))
        if len(texts) != 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"context {context} has {len(texts)} nif:isString values, expected 1")
        text = str(texts[0])
        try:
            with self.server.linker_lock:
                result = self.server.linker.link([text])
        except Exception as e:
            LOG.exception("linker failed on %s", context)
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"linker failed: {type(e).__name__}: {e}") from None
        add_annotations(graph, context, text, _check_annotations(text, result))
        return graph.serialize(format="turtle").encode("utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status >= 400:
            self.send_header("Connection", "close")  # an unread request body may remain on the socket
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        LOG.info("%s - %s", self.address_string(), format % args)


def make_server(host: str, port: int, linker, max_body: int = MAX_BODY) -> AnnotatorServer:
    """A bound (not yet serving) annotator server; port 0 picks a free port (see `server.server_address`)."""
    return AnnotatorServer((host, port), linker, max_body)


def serve(host: str, port: int, linker, max_body: int = MAX_BODY) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(host, port, linker, max_body)
    bound_host, bound_port = server.server_address[:2]
    LOG.info("NIF annotator listening on http://%s:%d/ (POST application/x-turtle)", bound_host, bound_port)
    print(f"NIF annotator listening on http://{bound_host}:{bound_port}/ (POST application/x-turtle)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
