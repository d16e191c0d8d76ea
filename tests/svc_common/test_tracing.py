"""svc_common.tracing: what the SDK is given."""

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk import resources
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from svc_common import span_encoding
from svc_common.tracing import HashedOnceResource

ATTRIBUTES = {"service.name": "user-svc", "service.version": "0.1.0", "deployment.environment": "test"}


def spans_on(resource: Resource, count: int):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(__name__)
    for n in range(count):
        with tracer.start_as_current_span("GET /users/{pk}", attributes={"http.status_code": 200, "n": n}):
            pass
    return exporter.get_finished_spans()


def test_the_resource_is_the_sdk_one_with_the_same_hash():
    plain = Resource.create(ATTRIBUTES)
    hashed = HashedOnceResource(plain)
    assert hashed == plain and plain == hashed
    assert hash(hashed) == hash(plain)
    assert dict(hashed.attributes) == dict(plain.attributes)
    assert hashed.schema_url == plain.schema_url
    assert hashed != Resource.create({**ATTRIBUTES, "service.name": "order-svc"})


def test_encoding_a_batch_does_not_dump_the_resource_once_per_span(monkeypatch):
    """The SDK's Resource.__hash__ dumps its attributes to JSON; the encoder hashes it per span."""
    dumps, calls = resources.dumps, []

    def counting_dumps(*args, **kwargs):
        calls.append(args)
        return dumps(*args, **kwargs)

    monkeypatch.setattr(resources, "dumps", counting_dumps)
    hashed, plain = (
        spans_on(HashedOnceResource(Resource.create(ATTRIBUTES)), 64),
        spans_on(Resource.create(ATTRIBUTES), 64),
    )
    calls.clear()
    request = encode_spans(hashed)
    assert calls == []
    assert [len(r.scope_spans[0].spans) for r in request.resource_spans] == [64]
    span_encoding.encode_spans(hashed)  # what the services' exporter encodes with: grouped the same way
    assert calls == []
    # What it replaces: one dump per span.
    encode_spans(plain)
    assert len(calls) >= 64
