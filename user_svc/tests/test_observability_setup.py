"""What the user service's logs, traces and metrics rely on, checked in-process."""

from django.conf import settings
from opentelemetry import trace

from svc_common.tracing import configure_tracing
from testsupport.django_checks import unnamed_url_patterns, url_names


def test_every_url_pattern_is_named():
    assert unnamed_url_patterns() == []
    assert {"user-list", "user-detail", "healthz", "readyz", "prometheus-django-metrics"} <= url_names()


def test_tracing_is_configured_once_with_this_services_name():
    provider = configure_tracing()
    assert configure_tracing() is provider is trace.get_tracer_provider()
    assert provider.resource.attributes["service.name"] == "user-svc"
    otel_middleware = [m for m in settings.MIDDLEWARE if m.startswith("opentelemetry.")]
    assert len(otel_middleware) == 1

