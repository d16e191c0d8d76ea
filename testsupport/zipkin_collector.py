"""A real Zipkin v2 collector on loopback: what Jaeger or Zipkin would receive from Envoy's Zipkin tracer.

    with ZipkinCollector() as collector:
        point Envoy's zipkin collector_cluster at collector.port (endpoint /api/v2/spans, HTTP_JSON)
        spans = collector.wait_for(lambda spans: ..., timeout=10)

Accepts ``POST /api/v2/spans`` with a JSON array of Zipkin v2 spans (chunked or not, gzip encoded or
not: Envoy sends chunked batches), answers
202 as Zipkin does, and keeps every span as the dict it was sent (``traceId``, ``id``, ``parentId``,
``name``, ``kind``, ``localEndpoint``, ``tags``, ...).
"""

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPANS_PATH = "/api/v2/spans"


@dataclass
class ZipkinCollector:
    spans: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # path and content type of each accepted POST

    def __post_init__(self):
        self._condition = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[dict]:
        with self._condition:
            return list(self.spans)

    def wait_for(self, predicate, timeout: float = 10.0) -> list[dict]:
        """All spans so far, once ``predicate(spans)`` is true; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate(list(self.spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"zipkin spans never matched within {timeout}s; got {self.spans!r}")
                self._condition.wait(remaining)
            return list(self.spans)

    def _store(self, request_info: dict, spans: list[dict]) -> None:
        with self._condition:
            self.requests.append(request_info)
            self.spans.extend(spans)
            self._condition.notify_all()

    def _handler_class(self):
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                """Envoy's Zipkin reporter sends its batches chunked, without a Content-Length."""
                if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk

            def do_POST(self):
                body = self._body()
                if self.path.split("?")[0] != SPANS_PATH:
                    return self._answer(404, b"not found")
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                try:
                    spans = json.loads(body)
                    if not isinstance(spans, list) or not all(isinstance(s, dict) for s in spans):
                        raise ValueError("expected a JSON array of span objects")
                except ValueError as exc:  # the tracer's bug: say so, keep serving
                    return self._answer(400, str(exc).encode())
                collector._store({"path": self.path, "content_type": self.headers.get("Content-Type")}, spans)
                self._answer(202)

        return Handler
