"""A real OTLP/HTTP trace receiver on loopback: what a collector would see from the services.

    with OtlpReceiver() as receiver:
        start services with OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url
        spans = receiver.wait_for(lambda spans: ..., timeout=10)

Accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (gzip or deflate encoded or
not; with a Content-Length, as the Python exporter sends it, or chunked, as Envoy's OpenTelemetry tracer
does), answers 200 with an empty ``ExportTraceServiceResponse``, and keeps every span as a ``Span``
with hex ids and its resource's ``service.name``. A body it cannot read or decode gets a 400, never a
200 with nothing recorded.
"""

import gzip
import zlib
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from .http_server import BadRequestBody, QuietHandler, SpanReceiver, read_body

KIND_NAMES = {value: name.removeprefix("SPAN_KIND_") for name, value in SpanProto.SpanKind.items()}
STATUS_NAMES = {value: name.removeprefix("STATUS_CODE_") for name, value in Status.StatusCode.items()}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict
    resource: dict
    status: str = "UNSET"  # UNSET, OK or ERROR


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def _attributes(key_values) -> dict:
    return {item.key: _value(item.value) for item in key_values}


def decode_spans(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        service=resource.get("service.name", ""),
                        name=span.name,
                        kind=KIND_NAMES.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        status=STATUS_NAMES.get(span.status.code, str(span.status.code)),
                    )
                )
    return spans


@dataclass
class OtlpReceiver(SpanReceiver):
    """``url`` is the base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT): exporters append /v1/traces themselves.
    ``spans`` are ``Span``s; ``requests`` has the path, content type, encodings, sender and services of
    each accepted POST."""

    def _handler_class(self):
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):
                try:
                    body = read_body(self)
                except BadRequestBody as exc:  # the rest of the connection cannot be parsed either
                    self.close_connection = True
                    return self._answer(400, str(exc).encode(), "text/plain")
                if self.path != "/v1/traces":
                    return self._answer(404, b"not found", "text/plain")
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    spans = decode_spans(body)
                except Exception as exc:  # a malformed body is the exporter's bug: say so, keep serving
                    return self._answer(400, str(exc).encode(), "text/plain")
                info = {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "encoding": encoding,
                    "transfer_encoding": (self.headers.get("Transfer-Encoding") or "").lower(),
                    "user_agent": self.headers.get("User-Agent") or "",
                    "services": sorted({span.service for span in spans}),
                    "spans": len(spans),
                }
                receiver._store(info, spans)
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        return Handler
