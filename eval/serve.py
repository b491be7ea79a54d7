"""A GERBIL-compatible NIF annotator web service around any linker (`linker.link(texts) -> annotations`).

POST a NIF 2.0 Turtle document (`Content-Type: application/x-turtle` or `text/turtle`) with
exactly one `nif:Context`; the answer is the same graph plus one `nif:Phrase` per annotation
(`nif:anchorOf`, `nif:beginIndex`/`nif:endIndex` in UTF-16 code units as GERBIL counts them,
`nif:referenceContext`, `itsrdf:taIdentRef`). Linked entities are written as
`http://dbpedia.org/resource/<id>` (characters not allowed in an IRI percent-encoded); NIL
annotations are written with an `http://aksw.org/notInWiki/<surface>` URI, which GERBIL
scores as emerging entities (EE) and leaves out of the InKB scores. A character above U+FFFF
written as two `\\u` escapes (a UTF-16 surrogate pair, as Java writers do) is read as that character.

Errors are one-line plain-text answers, and the connection is closed after them:
400 (not UTF-8 / not Turtle, a lone surrogate, an IRI Turtle cannot write such as one with a
space, no or several contexts, a context that is not an absolute IRI or whose nif:isString is
not one literal, bad Content-Length, a client that closed before sending its whole body),
405 (other methods than POST), 408 (the body did not arrive within `timeout` seconds),
411 (no Content-Length), 413 (Content-Length over `max_body` bytes, answered before any of the
body is read; or a context over `max_chars` characters), 415 (other content types), 503 with
`Retry-After` (`max_in_flight` requests already in work; answered at once). 500 is only for a
failing linker (or a bug). `Expect: 100-continue` is answered only once the body will be read,
so a client that waits for it never sends a refused body; a client that sends it anyway can
still read the answer: what it sends is dropped for up to `LINGER_S` seconds after the answer,
before the close.

Limits (`ServiceLimits`): at most `max_in_flight` requests are read, parsed and linked at once,
so request bodies in memory stay under `max_in_flight * max_body` bytes; every socket read or
write waits at most `timeout` seconds and a whole body must arrive within `timeout` seconds,
so a slow or silent client cannot hold a thread (an idle kept-alive connection is closed after
`timeout` seconds). The listen backlog is `LISTEN_BACKLOG`. No request stops the server.
Requests are parsed in parallel threads; calls to the linker are serialised with a lock,
because models are not safe to call from several threads at once.
"""
from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rdflib import Literal, URIRef

from eval.nif import NIF, NifError, add_annotations, normalise_terms, parse_graph
from onegen.spans import Mention

LOG = logging.getLogger(__name__)

TURTLE_TYPES = ("application/x-turtle", "text/turtle")  # accepted request content types
LISTEN_BACKLOG = 128  # connections the kernel queues before the server accepts them
RETRY_AFTER_S = 1  # Retry-After of a 503 answer, in seconds
LINGER_S = 2.0  # seconds a closing connection still takes (and drops) what the client sends, so it can read the answer
PLAIN_TEXT = "text/plain; charset=utf-8"
RELATIVE_BASE = "http://relative-iri.invalid/"  # base of relative IRIs in a request, so a relative context is seen and refused


@dataclass
class ServiceLimits:
    """What one client may take from the service; over a limit it gets a 4xx/503 answer, never a hang."""

    max_body: int = 2 * 1024 * 1024  # request bodies over this many bytes get 413 (a 100k-char context fits)
    max_chars: int = 100_000  # contexts over this many characters (code points) get 413
    max_in_flight: int = 16  # requests read, parsed or linked at once; one more gets 503 at once
    timeout: float = 30.0  # seconds a socket read or write may wait, and a whole body may take to arrive

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"service limit {name} must be above 0, got {value!r}")


class RequestError(Exception):
    """A request the service refuses: HTTP status, a message for the client and extra headers."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class AnnotatorServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the linker, its lock, the limits and the in-flight request slots."""

    daemon_threads = True  # request threads do not keep the process alive
    request_queue_size = LISTEN_BACKLOG  # listen backlog (socketserver's default is 5)

    def __init__(self, address: tuple[str, int], linker, limits: ServiceLimits):
        super().__init__(address, NifAnnotatorHandler)
        self.linker = linker  # any object with link(texts: list[str]) -> list[list[Mention]]
        self.limits = limits  # body, context, concurrency and time limits
        self.linker_lock = threading.Lock()  # one linker call at a time
        self.in_flight = threading.BoundedSemaphore(limits.max_in_flight)  # one slot per request in work

    def shutdown_request(self, request: socket.socket) -> None:
        """Close a connection so the client can read the last answer: FIN after it, then drop what the client still
        sends (a refused body) for up to LINGER_S seconds, since closing with unread data resets the connection."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(65536):  # the client closed too
                    break
        except OSError:  # the client is gone, reset or too slow: nothing more to wait for
            pass
        self.close_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that went away or timed out is logged in one line; anything else with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            LOG.info("connection from %s dropped: %s", client_address[0], error)
        else:
            LOG.exception("connection from %s failed", client_address[0])


def _check_annotations(text: str, result) -> list[Mention]:
    """The linker's annotations for one text, checked against the text."""
    if not isinstance(result, list) or len(result) != 1:
        raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                           f"linker returned {result!r:.200}; expected a list holding one list of annotations")
    for a in result[0]:
        if not (0 <= a.start < a.end <= len(text)):
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                               f"linker returned an annotation with span ({a.start}, {a.end}) outside the text (length {len(text)})")
    return result[0]


def _context_text(graph) -> tuple[URIRef, str]:
    """The one nif:Context of a request graph and its text; RequestError (400) otherwise."""
    contexts = sorted(set(graph.subjects(NIF.isString, None)))
    if len(contexts) != 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"expected exactly one nif:Context with nif:isString, got {len(contexts)}")
    context = contexts[0]
    if not isinstance(context, URIRef):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the nif:Context is a blank node ({context.n3()}); give it an absolute IRI")
    if context.startswith(RELATIVE_BASE):
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"the nif:Context IRI <{context[len(RELATIVE_BASE):]}> is relative; give it an absolute IRI")
    texts = list(graph.objects(context, NIF.isString))
    if len(texts) != 1 or not isinstance(texts[0], Literal):
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"context {context} has nif:isString {', '.join(t.n3() for t in texts):.200}; expected one string literal")
    return context, str(texts[0])


class NifAnnotatorHandler(BaseHTTPRequestHandler):
    """Answers POSTed NIF documents with the linker's annotations added."""

    server: AnnotatorServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.limits.timeout  # socket timeout of every read and write on this connection
        super().setup()

    def handle_expect_100(self) -> bool:
        """Do not answer `Expect: 100-continue` yet: a refused request gets its 4xx/503 and the body is never sent."""
        return True

    def do_POST(self) -> None:
        if not self.server.in_flight.acquire(blocking=False):
            self._send_error(RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"busy: {self.server.limits.max_in_flight} requests in work; retry in {RETRY_AFTER_S} s",
                {"Retry-After": str(RETRY_AFTER_S)}))
            return
        try:
            body = self._annotate()
        except RequestError as e:
            self._send_error(e)
        except ConnectionError:  # the client reset the connection while sending: no one to answer
            raise
        except Exception as e:  # a bug must not stop the server: answer 500 and keep serving
            LOG.exception("request failed")
            self._send_error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}: {e}"))
        else:
            self._send(HTTPStatus.OK, body, "application/x-turtle; charset=utf-8")
        finally:
            self.server.in_flight.release()

    def _refuse_method(self) -> None:
        self._send_error(RequestError(HTTPStatus.METHOD_NOT_ALLOWED,
                                      f"method {self.command} not allowed; POST a NIF Turtle document", {"Allow": "POST"}))

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse_method

    def _body_size(self) -> int:
        """Content-Length of a Turtle request, checked against `max_body` before any of the body is read."""
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
        if size > self.server.limits.max_body:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body of {size} bytes is over the limit of {self.server.limits.max_body} bytes")
        return size

    def _read_body(self) -> bytes:
        """The request body, which must arrive whole within `timeout` seconds (408 otherwise)."""
        size = self._body_size()
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        deadline = time.monotonic() + self.timeout
        body = bytearray()
        try:
            while len(body) < size:
                self.connection.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = self.rfile.read1(size - len(body))
                if not chunk:
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {size} bytes (Content-Length)")
                body += chunk
        except TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT,
                               f"got {len(body)} of {size} body bytes in {self.timeout:g} s; send the whole body at once") from None
        finally:
            self.connection.settimeout(self.timeout)
        return bytes(body)

    def _annotate(self) -> bytes:
        data = self._read_body()
        try:
            turtle = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not UTF-8: {e}") from None
        try:
            graph = parse_graph(turtle, source="request body", base=RELATIVE_BASE)
            normalise_terms(graph, source="request body")
        except NifError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None
        context, text = _context_text(graph)
        if len(text) > self.server.limits.max_chars:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"context {context} has {len(text)} characters, over the limit of "
                               f"{self.server.limits.max_chars}; split the text into several requests")
        try:
            with self.server.linker_lock:
                result = self.server.linker.link([text])
        except Exception as e:
            LOG.exception("linker failed on %s", context)
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"linker failed: {type(e).__name__}: {e}") from None
        add_annotations(graph, context, text, _check_annotations(text, result))
        return graph.serialize(format="turtle").encode("utf-8")

    def _send_error(self, error: RequestError) -> None:
        """A one-line plain-text error answer; the connection is closed after it (its body may be unread)."""
        self.close_connection = True
        message = f"{' '.join(str(error).split())}\n".encode("utf-8", "backslashreplace")
        self._send(error.status, message, PLAIN_TEXT, {**error.headers, "Connection": "close"})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        LOG.info("%s - %s", self.address_string(), format % args)


def make_server(host: str, port: int, linker, limits: ServiceLimits | None = None) -> AnnotatorServer:
    """A bound (not yet serving) annotator server; port 0 picks a free port (see `server.server_address`)."""
    return AnnotatorServer((host, port), linker, limits or ServiceLimits())


def serve(host: str, port: int, linker, limits: ServiceLimits | None = None) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(host, port, linker, limits)
    bound_host, bound_port = server.server_address[:2]
    LOG.info("NIF annotator listening on http://%s:%d/ (POST application/x-turtle)", bound_host, bound_port)
    print(f"NIF annotator listening on http://{bound_host}:{bound_port}/ (POST application/x-turtle)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
