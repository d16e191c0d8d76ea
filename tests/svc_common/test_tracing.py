"""svc_common.observability.tracing's hooks and placement, on the SDK's own spans. What the services
then export is tested end to end, through a real OTLP receiver (tests/e2e/test_tracing.py)."""

from types import SimpleNamespace

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags

from svc_common.observability.tracing import HOST_CHECK_MIDDLEWARE, bind_trace_ids, middleware_position, name_by_route


@pytest.fixture
def tracer():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer(__name__), exporter
    provider.shutdown()


def request(method: str, route: str | None):
    match = SimpleNamespace(route=route) if route is not None else None
    return SimpleNamespace(method=method, resolver_match=match)


@pytest.mark.parametrize(
    ("method", "route", "name", "http_route"),
    [
        ("GET", "^users/(?P<pk>[^/.]+)/?$", "GET /users/{pk}", "/users/{pk}"),  # DRF's router: a regex
        ("POST", "^orders/?$", "POST /orders", "/orders"),
        ("GET", "healthz", "GET /healthz", "/healthz"),  # path(): a route
        ("BREW", "^users/?$", "HTTP", "/users"),  # a method the conventions do not know keeps "HTTP"
        ("GET", None, "HTTP", None),  # nothing resolved (a 404): the instrumentation's own name
    ],
)
def test_server_spans_are_named_method_and_route(tracer, method, route, name, http_route):
    tracer, exporter = tracer
    with tracer.start_as_current_span("HTTP") as span:
        name_by_route(span, request(method, route), SimpleNamespace(status_code=200))
    (finished,) = exporter.get_finished_spans()
    assert finished.name == name
    assert finished.attributes.get("http.route") == http_route


def test_the_request_hook_puts_the_trace_on_every_line_of_the_request():
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    carried = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)))
    structlog.contextvars.clear_contextvars()
    try:
        bind_trace_ids(carried, SimpleNamespace())
        assert structlog.contextvars.get_contextvars() == {
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
        }
        structlog.contextvars.clear_contextvars()
        bind_trace_ids(INVALID_SPAN, SimpleNamespace())  # no trace came, none was started: no ids
        assert structlog.contextvars.get_contextvars() == {}
    finally:
        structlog.contextvars.clear_contextvars()


def test_the_instrumentations_middleware_goes_right_after_the_host_check():
    middleware = ["a.Metrics", "a.AccessLog", HOST_CHECK_MIDDLEWARE, "a.BodySize"]
    assert middleware_position(middleware) == 3
    assert middleware_position(["a.Metrics"]) == 0  # no Host check of ours: the instrumentation's default
