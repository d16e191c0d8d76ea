"""A threaded HTTP server on a free port, run in the background for the length of a `with`, and what
the trace receivers (``otlp_receiver``, the tests' Zipkin collector) and the tests' scripted servers
share: the request body reader, a quiet HTTP/1.1 handler, and the span store of the receivers."""

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BadRequestBody(ValueError):
    """The request's body is framed in a way the reader cannot follow; answer 400 and close."""


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, framed by ``Transfer-Encoding: chunked`` (which takes precedence, RFC 9112 6.3)
    or by ``Content-Length``; no framing means no body. Envoy's tracers send their batches chunked, with
    no Content-Length: reading Content-Length alone would see an empty body and leave the chunks on the
    connection. Trailers are read and dropped. Raises ``BadRequestBody`` on malformed framing; the
    connection is then unusable, so the caller should answer 400 with ``close_connection`` set."""
    transfer_encoding = handler.headers.get("Transfer-Encoding")
    if transfer_encoding is not None:
        codings = [c.strip().lower() for c in transfer_encoding.split(",")]
        if codings != ["chunked"]:  # chunked last is required; other codings we do not decode
            raise BadRequestBody(f"unsupported Transfer-Encoding: {transfer_encoding!r}")
        return _read_chunked(handler.rfile)
    length = handler.headers.get("Content-Length")
    if length is None:
        return b""
    if not length.strip().isdigit():
        raise BadRequestBody(f"bad Content-Length: {length!r}")
    body = handler.rfile.read(int(length))
    if len(body) != int(length):
        raise BadRequestBody(f"body ended after {len(body)} of {length} bytes")
    return body


def _read_chunked(rfile) -> bytes:
    chunks = []
    while True:
        line = rfile.readline(1024)
        size_text = line.split(b";", 1)[0].strip()  # a chunk extension may follow the size
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequestBody(f"bad chunk size line: {line!r}") from None
        if size == 0:
            while True:  # trailer fields, up to the empty line
                trailer = rfile.readline(8192)
                if trailer in (b"\r\n", b"\n"):
                    return b"".join(chunks)
                if not trailer:
                    raise BadRequestBody("connection closed inside the trailers")
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise BadRequestBody(f"chunk of {size} bytes cut short or not followed by CRLF")
        chunks.append(chunk)


class _ServerWithALongQueue(ThreadingHTTPServer):
    # socketserver listens with a queue of 5: a service (one gevent worker) connecting a dozen times
    # at once overflows it, and the kernel drops the extra SYNs (connect timeouts in the caller).
    # A real server's queue is far longer (gunicorn: 2048).
    request_queue_size = 128


class LoopbackHTTPServer:
    """Base for the test servers: subclasses provide ``_handler_class()`` and call ``_start_server()``.
    They listen on ``host`` (loopback unless a subclass says otherwise) on a port the kernel picks."""

    host = "127.0.0.1"

    def _start_server(self):
        self._server = _ServerWithALongQueue((self.host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler_class(self):
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    """A keep-alive (HTTP/1.1) handler that logs nothing, with one way to answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class SpanReceiver(LoopbackHTTPServer):
    """Base for the trace receivers: ``spans`` received so far and ``requests`` (one dict per accepted
    POST), kept under a condition so that a test can wait for the spans it expects. ``_SPANS`` names
    them in the timeout message. ``host``: where to listen (an address this test made, such as the
    bridge of a Docker network it created; loopback by default)."""

    spans: list = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    host: str = "127.0.0.1"

    _SPANS = "spans"

    def __post_init__(self):
        self._condition = threading.Condition()
        self._start_server()

    def snapshot(self) -> list:
        with self._condition:
            return list(self.spans)

    def wait_for(self, predicate, timeout: float = 10.0) -> list:
        """All spans so far, once ``predicate(spans)`` is true; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate(list(self.spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self._SPANS} never matched within {timeout}s; got {self.spans!r}")
                self._condition.wait(remaining)
            return list(self.spans)

    def _store(self, request_info: dict, spans: list) -> None:
        with self._condition:
            self.requests.append(request_info)
            self.spans.extend(spans)
            self._condition.notify_all()
