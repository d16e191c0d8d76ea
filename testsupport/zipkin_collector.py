"""A real Zipkin v2 collector on loopback: what Jaeger or Zipkin would receive from Envoy's Zipkin tracer.

    with ZipkinCollector() as collector:
        point Envoy's zipkin collector_cluster at collector.port (endpoint /api/v2/spans, HTTP_JSON)
        spans = collector.wait_for(lambda spans: ..., timeout=10)

Accepts ``POST /api/v2/spans`` with a JSON array of Zipkin v2 spans (chunked or not, gzip encoded or
not: Envoy sends chunked batches; the body is read by mesh_rehearsal.http_server.read_body), answers 202 as
Zipkin does, and keeps every span as the dict it was sent (``traceId``, ``id``, ``parentId``, ``name``,
``kind``, ``localEndpoint``, ``tags``, ...).
"""

import gzip
import json
from dataclasses import dataclass

from mesh_rehearsal.http_server import BadRequestBody, QuietHandler, SpanReceiver, read_body

SPANS_PATH = "/api/v2/spans"


@dataclass
class ZipkinCollector(SpanReceiver):
    """``port`` is what Envoy's collector cluster points at; ``url`` its base URL. ``spans`` are the span
    dicts; ``requests`` has the path and content type of each accepted POST."""

    _SPANS = "zipkin spans"

    def _handler_class(self):
        collector = self

        class Handler(QuietHandler):
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
