"""A real Zipkin v2 collector on loopback: what Jaeger or Zipkin would receive from Envoy's Zipkin tracer.

    with ZipkinCollector() as collector:
        point Envoy's zipkin collector_cluster at collector.port (endpoint /api/v2/spans, HTTP_JSON)
        spans = collector.wait_for(lambda spans: ..., timeout=10)

Accepts ``POST /api/v2/spans`` with a JSON array of Zipkin v2 spans (chunked or not, gzip encoded or
not: Envoy sends chunked batches; the body is read by testsupport.http_server.read_body), answers 202 as
Zipkin does, and keeps every span as the dict it was sent (``traceId``, ``id``, ``parentId``, ``name``,
``kind``, ``localEndpoint``, ``tags``, ...).
"""

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from testsupport.http_server import BadRequestBody, LoopbackHTTPServer, read_body

SPANS_PATH = "/api/v2/spans"


@dataclass
class ZipkinCollector(LoopbackHTTPServer):
    """``port`` is what Envoy's collector cluster points at; ``url`` its base URL."""

    spans: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # path and content type of each accepted POST

    def __post_init__(self):
        self._condition = threading.Condition()
        self._start_server()

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

            def do_POST(self):
                try:
                    body = read_body(self)  # Envoy's Zipkin reporter sends chunked, without Content-Length
                except BadRequestBody as exc:  # the rest of the connection cannot be parsed either
                    self.close_connection = True
                    return self._answer(400, str(exc).encode())
                if self.path.split("?")[0] != SPANS_PATH:
                    return self._answer(404, b"not found")
                try:
                    if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                        body = gzip.decompress(body)
                    spans = json.loads(body)
                    if not isinstance(spans, list) or not all(isinstance(s, dict) for s in spans):
                        raise ValueError("expected a JSON array of span objects")
                except Exception as exc:  # a malformed body is the tracer's bug: say so, keep serving
                    return self._answer(400, str(exc).encode())
                collector._store({"path": self.path, "content_type": self.headers.get("Content-Type")}, spans)
                self._answer(202)

        return Handler
