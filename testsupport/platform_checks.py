"""Tests of what svc_common gives every service (named routes, tracing set up once, spans named after
the service), collected by each service's own suite under its own settings:
``from testsupport.platform_checks import *`` in a test module."""

from django.conf import settings
from opentelemetry import trace

from svc_common.tracing import build_provider, configure_tracing
from testsupport.django_checks import unnamed_url_patterns, url_names


def test_every_url_pattern_is_named():
    assert unnamed_url_patterns() == []
    resource = settings.SERVICE_NAME.removesuffix("-svc")  # user-svc: the user-list and user-detail routes
    platform = {"healthz", "readyz", "prometheus-django-metrics", "schema", "docs"}
    assert {f"{resource}-list", f"{resource}-detail", *platform} <= url_names()


def test_tracing_is_instrumented_once_and_records_nothing_without_an_endpoint():
    assert configure_tracing() is None  # no OTLP endpoint here: no SDK, only propagation
    assert configure_tracing() is None
    assert not trace.get_tracer(__name__).start_span("probe").is_recording()
    tracing_middleware = [m for m in settings.MIDDLEWARE if "tracing" in m or m.startswith("opentelemetry.")]
    assert tracing_middleware == ["svc_common.tracing.ServerSpanMiddleware"]


def test_exported_spans_name_this_service():
    provider, _ = build_provider()
    try:
        assert provider.resource.attributes["service.name"] == settings.SERVICE_NAME
        assert provider.resource.attributes["service.version"] == settings.SERVICE_VERSION
    finally:
        provider.shutdown()


def test_no_database_housekeeping_per_request_without_a_database():
    """The in-memory backend has no database: nothing to reset or close at each request's start and end."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.dummy"
    assert not request_started.has_listeners()
    assert request_finished.disconnect(close_old_connections) is False  # it was not connected


def test_a_view_that_raises_is_counted_by_type_and_view_and_still_timed(rf):
    """Nothing a client sends makes a view raise (that would be a bug), so the exception counters are
    checked here: Django calls process_exception, then the 500 goes out through __call__."""
    from django.http import HttpResponse
    from django.urls import ResolverMatch
    from prometheus_client import REGISTRY

    from svc_common.request_metrics import RequestMetricsMiddleware

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    request = rf.get("/users/1")
    request.resolver_match = ResolverMatch(lambda r: None, (), {}, url_name="boom", route="users/<pk>")
    labels = {"view": "boom", "method": "GET"}

    def samples() -> tuple[float, ...]:
        return (
            sample("django_http_exceptions_total_by_type_total", type="ZeroDivisionError"),
            sample("django_http_exceptions_total_by_view_total", view="boom"),
            sample("django_http_responses_total_by_status_view_method_total", status="500", **labels),
            sample("django_http_requests_latency_seconds_by_view_method_count", **labels),
            sample("django_http_requests_total_by_view_transport_method_total", transport="http", **labels),
        )

    before = samples()

    def view(request):  # what Django's handler does around a view that raises
        middleware.process_view(request, None, (), {})
        middleware.process_exception(request, ZeroDivisionError())
        return HttpResponse(status=500)

    middleware = RequestMetricsMiddleware(view)
    assert middleware(request).status_code == 500
    after = samples()
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1, 1]
