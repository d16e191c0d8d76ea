"""svc_common.observability.span_recorder: whatever is done to a span, the finished span is the one the SDK's own
tracer gives for the same calls, on the same provider, limits and parent."""

import decimal
import http
import http.client

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from svc_common.observability import span_encoding
from svc_common.observability.span_recorder import RecordedSpan, SpanRecorder

SCOPE = "svc_common.observability.tracing"
REMOTE_PARENT = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value")]),
)


def pipeline(limits: SpanLimits, ratio: float = 1.0):
    """The SDK's tracer and ours on one provider, both finishing into one exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "user-svc"}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
        span_limits=limits,
    )
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider.get_tracer(SCOPE), SpanRecorder(provider, processor, limits, SCOPE), exporter


def seen(span: ReadableSpan) -> dict:
    """All of a finished span that the two tracers must agree on (not its ids or clock readings)."""
    return {
        "name": span.name,
        "kind": span.kind,
        "parent": span.parent,
        "flags": span.context.trace_flags,
        "trace_state": span.context.trace_state,
        "attributes": list(span.attributes.items()),  # in order: the oldest is the one dropped
        "dropped_attributes": span.dropped_attributes,
        "events": [(event.name, list(event.attributes.items())) for event in span.events],
        "dropped_events": span.dropped_events,
        "links": [(link.context, list(link.attributes.items())) for link in span.links],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource,
        "scope": span.instrumentation_scope,
    }


class Unprintable:
    """A value with no str of its own: the SDK replaces it with None."""


keys = st.one_of(st.sampled_from(["http.route", "a", "b", ""]), st.text(max_size=3))
plain_values = st.one_of(
    st.text(max_size=8),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=4),
    st.none(),
)
odd_values = st.one_of(  # what the SDK cleans: the recorder hands these to its BoundedAttributes
    st.lists(plain_values, max_size=3),
    st.tuples(st.integers(), st.text(max_size=2)),
    st.dictionaries(st.text(max_size=3), plain_values, max_size=2),
    st.just(decimal.Decimal("1.5")),  # not an attribute value: the SDK keeps its str
    st.just(http.HTTPStatus.NOT_FOUND),  # an int, of a subclass
    st.builds(Unprintable),
)
values = st.one_of(plain_values, plain_values, plain_values, odd_values)  # mostly a request's own
exceptions = st.sampled_from([ValueError("bad"), KeyError("k"), http.client.RemoteDisconnected("gone")])
calls = st.one_of(
    st.tuples(st.just("set_attribute"), keys, values),
    st.tuples(st.just("set_attributes"), st.dictionaries(keys, values, max_size=14)),
    st.tuples(st.just("add_event"), st.text(max_size=4), st.dictionaries(keys, plain_values, max_size=3)),
    st.tuples(st.just("add_link"), st.sampled_from([REMOTE_PARENT, trace.INVALID_SPAN_CONTEXT]), st.none()),
    st.tuples(
        st.just("set_status"),
        st.sampled_from([Status(StatusCode.ERROR, "why"), Status(StatusCode.OK), Status(StatusCode.UNSET)]),
    ),
    st.tuples(st.just("set_status"), st.sampled_from(list(StatusCode)), st.sampled_from([None, "why"])),
    st.tuples(st.just("update_name"), st.text(max_size=6)),
    st.tuples(st.just("record_exception"), exceptions),
)
# A request's own calls (valid keys, plain values: the recorder's dict throughout), often setting a
# key again, which moves it to the end, and so decides which attribute a full span drops.
request_keys = st.sampled_from(["http.route", "http.status_code", "a", "b"])
request_calls = st.one_of(
    st.tuples(st.just("set_attribute"), request_keys, plain_values),
    st.tuples(st.just("set_attributes"), st.dictionaries(request_keys, plain_values, max_size=3)),
    st.tuples(st.just("set_status"), st.sampled_from(list(StatusCode)), st.sampled_from([None, "why"])),
)
scripts = st.one_of(st.lists(request_calls, max_size=12), st.lists(calls, max_size=12))
limits = st.builds(
    SpanLimits,
    max_span_attributes=st.sampled_from([SpanLimits.UNSET, 0, 1, 3, 128]),
    max_span_attribute_length=st.sampled_from([None, None, 0, 4]),
    max_events=st.sampled_from([0, 1, 128]),
    max_links=st.sampled_from([0, 1, 128]),
    max_event_attributes=st.sampled_from([1, 128]),
    max_link_attributes=st.sampled_from([1, 128]),
)


def play(tracer, parent, start_attributes, script, late) -> None:
    span = tracer.start_span("GET", context=parent, kind=SpanKind.SERVER, attributes=start_attributes)
    assert span.is_recording()
    for name, *arguments in script:
        getattr(span, name)(*arguments)
    span.end()
    assert not span.is_recording()
    for name, *arguments in late:  # an ended span records nothing more
        getattr(span, name)(*arguments)
    span.end()


@settings(max_examples=300, deadline=None)
@given(
    limits=limits,
    remote=st.booleans(),
    start_attributes=st.one_of(
        st.none(), st.dictionaries(request_keys, plain_values, max_size=3), st.dictionaries(keys, values, max_size=5)
    ),
    script=scripts,
    late=st.lists(calls, max_size=2),
)
def test_any_calls_finish_as_the_sdk_span(limits, remote, start_attributes, script, late):
    sdk, ours, exporter = pipeline(limits)
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE_PARENT)) if remote else context.Context()
    play(sdk, parent, start_attributes, script, late)
    play(ours, parent, start_attributes, script, late)
    expected, got = exporter.get_finished_spans()
    assert seen(got) == seen(expected)
    assert (got.context.trace_id == REMOTE_PARENT.trace_id) is remote
    try:
        sdk_request = sdk_encode_spans([got]).SerializeToString()
    except (ValueError, TypeError, OverflowError):
        return  # a value neither encoder can write (protobuf refuses it)
    ours_request = span_encoding.encode_spans([got])
    assert ExportTraceServiceRequest.FromString(ours_request) == ExportTraceServiceRequest.FromString(sdk_request)


def test_a_request_span_stays_a_plain_dict_and_takes_no_lock():
    """The reason for the recorder: 13 new plain attributes, a route and a status code, no cleaning."""
    _, ours, exporter = pipeline(SpanLimits())
    span = ours.start_span("GET", kind=SpanKind.SERVER, attributes={"http.method": "GET"})
    assert isinstance(span, RecordedSpan)
    span.set_attributes({f"attribute.{n}": n for n in range(12)})
    span.set_attribute("http.route", "/users/{pk}")
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert type(finished._attributes) is dict
    assert len(finished.attributes) == 14 and finished.dropped_attributes == 0


def test_the_sampler_decides_and_an_unsampled_parent_is_followed():
    _, ours, exporter = pipeline(SpanLimits(), ratio=0.0)
    root = ours.start_span("GET", context=context.Context())
    assert not root.is_recording() and root.get_span_context().is_valid
    assert not root.get_span_context().trace_flags.sampled
    _, ours, exporter = pipeline(SpanLimits(), ratio=1.0)
    unsampled = SpanContext(REMOTE_PARENT.trace_id, REMOTE_PARENT.span_id, True, TraceFlags(TraceFlags.DEFAULT))
    child = ours.start_span("GET", context=trace.set_span_in_context(NonRecordingSpan(unsampled)))
    assert not child.is_recording()
    assert child.get_span_context().trace_id == REMOTE_PARENT.trace_id
    child.end()
    assert exporter.get_finished_spans() == ()


def test_as_current_span_an_exception_is_recorded_and_an_error():
    sdk, ours, exporter = pipeline(SpanLimits())

    def work(tracer) -> None:
        with tracer.start_as_current_span("work") as span:
            assert trace.get_current_span() is span
            raise ZeroDivisionError("nothing")

    for tracer in (sdk, ours):
        with pytest.raises(ZeroDivisionError):
            work(tracer)
    expected, got = exporter.get_finished_spans()
    assert {**seen(got), "events": None} == {**seen(expected), "events": None}
    # The same event, but for the stack trace: it runs through each tracer's own frames.
    (event,) = got.events
    assert dict(event.attributes, **{"exception.stacktrace": None}) == dict(
        expected.events[0].attributes, **{"exception.stacktrace": None}
    )
    assert event.attributes["exception.stacktrace"].endswith("ZeroDivisionError: nothing\n")
    assert (got.status.status_code, event.attributes["exception.type"]) == (StatusCode.ERROR, "ZeroDivisionError")


@pytest.mark.parametrize("record_exception", [True, False])
@pytest.mark.parametrize("set_status_on_exception", [True, False])
def test_with_the_span_itself_an_exception_is_handled_as_start_span_was_asked(
    record_exception, set_status_on_exception
):
    sdk, ours, exporter = pipeline(SpanLimits())

    def work(tracer) -> None:
        options = {"record_exception": record_exception, "set_status_on_exception": set_status_on_exception}
        with tracer.start_span("work", **options):
            raise ZeroDivisionError("nothing")

    for tracer in (sdk, ours):
        with pytest.raises(ZeroDivisionError):
            work(tracer)
    expected, got = exporter.get_finished_spans()
    assert seen(got) == seen(expected)  # the stack trace too: it runs through the same frames
    assert len(got.events) == record_exception
    assert (got.status.status_code is StatusCode.ERROR) == set_status_on_exception


def test_a_span_of_another_tracer_inside_is_its_child():
    sdk, ours, exporter = pipeline(SpanLimits())
    with ours.start_as_current_span("request") as outer, sdk.start_as_current_span("query"):
        pass
    inner, finished_outer = exporter.get_finished_spans()
    assert inner.parent == outer.get_span_context() == finished_outer.context
