"""svc_common.observability.span_encoding: the bytes parse as the very request the SDK's encoder builds."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from svc_common.observability import span_encoding
from svc_common.observability.span_encoding import encode_spans
from svc_common.observability.tracing import HashedOnceResource

RESOURCE = HashedOnceResource(Resource.create({"service.name": "user-svc", "service.version": "0.1.0"}))
GET_ATTRIBUTES = {
    "http.method": "GET",
    "http.server_name": "127.0.0.1",
    "http.scheme": "http",
    "net.host.name": "127.0.0.1:8001",
    "net.host.port": 8001,
    "http.target": "/users/7",
    "net.peer.ip": "127.0.0.1",
    "net.peer.port": 45678,
    "http.user_agent": "wrk/4.2",
    "http.flavor": "1.1",
}


def recorder(resource: Resource = RESOURCE) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def assert_same_request(spans) -> ExportTraceServiceRequest:
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    sdk = ExportTraceServiceRequest.FromString(sdk_encode_spans(spans).SerializeToString())
    assert ours == sdk
    return ours


def test_a_get_server_span_batch_is_the_sdk_request():
    provider, exporter = recorder()
    tracer = provider.get_tracer("svc_common.observability.tracing")
    for n in range(64):
        attributes = {**GET_ATTRIBUTES, "http.target": f"/users/{n}"}
        span = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=attributes)
        span.set_attribute("http.route", "/users/{pk}")
        span.set_attribute("http.status_code", 200)
        span.update_name("GET /users/{pk}")
        span.end()
    request = assert_same_request(exporter.get_finished_spans())
    (resource_spans,) = request.resource_spans
    assert [len(scope.spans) for scope in resource_spans.scope_spans] == [64]
    assert resource_spans.scope_spans[0].spans[5].attributes[5].value.string_value == "/users/5"


def test_a_large_batch_steps_aside_every_so_many_spans_and_encodes_the_same(monkeypatch):
    """The services' exporter encodes on a gevent worker's event loop: time.sleep(0) there lets the
    waiting requests run. Pausing changes nothing in the bytes."""
    provider, exporter = recorder()
    tracer = provider.get_tracer("svc_common.observability.tracing")
    for n in range(520):
        tracer.start_span("GET /users/{pk}", kind=SpanKind.SERVER, attributes={**GET_ATTRIBUTES, "n": n}).end()
    spans = exporter.get_finished_spans()
    pauses = []
    monkeypatch.setattr(span_encoding.time, "sleep", pauses.append)
    paused = encode_spans(spans, pause_every=64)
    assert pauses == [0] * 8  # after 64, 128, ... 512 spans
    assert paused == encode_spans(spans)
    assert pauses == [0] * 8


def test_remote_parents_errors_trace_state_events_and_links_are_the_sdk_request():
    provider, exporter = recorder()
    tracer = provider.get_tracer(
        "svc_common.observability.tracing", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0"
    )
    remote = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value"), ("other", "x")]),
    )
    parent = set_span_in_context(NonRecordingSpan(remote))
    with tracer.start_as_current_span("POST /orders", context=parent, kind=SpanKind.SERVER) as server:
        server.set_status(Status(StatusCode.ERROR, "user service unavailable"))
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.status_code": 503}):
            pass
    with tracer.start_as_current_span("GET /users/{pk}", context=parent, kind=SpanKind.SERVER) as failed:
        try:
            raise ValueError("café ☕ boom")  # an exception event: the SDK's encoder takes this span
        except ValueError as error:
            failed.record_exception(error)
    with tracer.start_as_current_span("linked", links=[Link(remote, {"why": "retry"})]):
        pass
    spans = exporter.get_finished_spans()
    assert [bool(span.events or span.links) for span in spans] == [False, False, True, True]
    assert spans[1].parent.is_remote and spans[1].get_span_context().trace_state
    assert_same_request(spans)


def test_spans_of_several_services_and_libraries_group_as_the_sdk_groups_them():
    spans = []
    for service in ("user-svc", "order-svc"):
        provider, exporter = recorder(HashedOnceResource(Resource.create({"service.name": service})))
        for library in ("svc_common.observability.tracing", "other"):
            with provider.get_tracer(library).start_as_current_span(f"{service} {library}"):
                pass
        spans.extend(exporter.get_finished_spans())
    spans.append(spans.pop(0))  # interleaved: grouping must not depend on order
    request = assert_same_request(spans)
    assert len(request.resource_spans) == 2


values = st.one_of(
    st.text(max_size=300),  # past the length whose encoding is remembered, too
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**70),  # beyond int64: the SDK's encoder decides
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=3),  # arrays: the SDK's encoder takes the span
)


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=20), values, max_size=12),
    name=st.text(max_size=300),  # past the length whose bytes are remembered, too
    kind=st.sampled_from(list(SpanKind)),
    status=st.sampled_from([StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR]),
)
def test_any_attributes_kind_and_status_give_the_sdk_request(attributes, name, kind, status):
    provider, exporter = recorder()
    try:
        with provider.get_tracer("t").start_as_current_span(name, kind=kind, attributes=attributes) as span:
            span.set_status(Status(status, "why" if status is StatusCode.ERROR else None))
    except OverflowError:
        return  # the SDK refuses such an attribute itself
    spans = exporter.get_finished_spans()
    if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63 for v in attributes.values()):
        return  # neither encoder can write it (protobuf refuses): nothing to compare
    assert_same_request(spans)


def test_a_nan_attribute_is_written_as_nan():
    provider, exporter = recorder()
    with provider.get_tracer("t").start_as_current_span("x", attributes={"ratio": math.nan}):
        pass
    request = ExportTraceServiceRequest.FromString(encode_spans(exporter.get_finished_spans()))
    assert math.isnan(request.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.double_value)
