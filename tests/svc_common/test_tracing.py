"""svc_common.observability.tracing: what the SDK is given, and the server span's attributes."""

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation.wsgi import collect_request_attributes
from opentelemetry.sdk import resources
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from svc_common.observability import span_encoding
from svc_common.observability.tracing import HashedOnceResource, server_request_attributes

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


# A request as a WSGI server hands it to Django: every key collect_request_attributes reads. PEP 3333
# requires the first four; any other may be absent (RAW_URI is gunicorn's).
REQUIRED_ENVIRON = {
    "REQUEST_METHOD": st.sampled_from(["GET", "POST", "PATCH", "DELETE", "OPTIONS", "BREW", ""]),
    "SERVER_NAME": st.sampled_from(["0.0.0.0", "127.0.0.1", "user-svc", ""]),
    "SERVER_PORT": st.sampled_from(["8000", "8001", "443"]),
    "wsgi.url_scheme": st.sampled_from(["http", "https"]),
}
OPTIONAL_ENVIRON = {
    "HTTP_HOST": st.one_of(st.sampled_from(["127.0.0.1:8001", "user-svc:8000", "[::1]:8001"]), st.text(max_size=40)),
    "RAW_URI": st.one_of(st.just("/users/7"), st.text(min_size=1, max_size=300)),
    "PATH_INFO": st.just("/users/7"),
    "QUERY_STRING": st.sampled_from(["", "page=2", "token=secret&a=1"]),
    "REMOTE_ADDR": st.sampled_from(["127.0.0.1", "127.0.0.6", "10.0.3.7", "::1", ""]),
    "REMOTE_PORT": st.sampled_from(["40000", "1", "65535", ""]),
    "REMOTE_HOST": st.sampled_from(["127.0.0.1", "client.local", ""]),
    "HTTP_USER_AGENT": st.one_of(
        st.sampled_from(["wrk", "python-requests/2.32.5", "Mozilla/5.0 (X11; Linux) Chrome/156", "AlwaysOn"]),
        st.text(max_size=60),
    ),
    "SERVER_PROTOCOL": st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1", ""]),
}


@settings(max_examples=300, deadline=None)
@given(
    environ=st.fixed_dictionaries(REQUIRED_ENVIRON, optional=OPTIONAL_ENVIRON),
    repeats=st.integers(min_value=1, max_value=3),
)
def test_server_request_attributes_are_what_opentelemetry_collects(environ, repeats):
    """The shortcut remembers what repeats; every request still gets exactly the library's attributes
    (the remembered part is never handed out to be changed), also without a raw target (not under
    gunicorn), where the library rebuilds the URL."""
    for _ in range(repeats):
        attributes = server_request_attributes(environ)
        assert attributes == collect_request_attributes(environ)
        attributes["http.route"] = "/users/{pk}"  # what the middleware adds to its own copy
