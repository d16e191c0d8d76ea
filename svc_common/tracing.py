"""OpenTelemetry tracing for both services: set up once per process, in each gunicorn worker after the fork.

Under gunicorn the ``post_fork`` hook (svc_common/gunicorn_conf.py) calls ``configure_tracing()`` before
the worker loads the app, so the Django instrumentation's middleware is in place when Django builds its
middleware chain; the app's ``AppConfig.ready()`` then finds tracing configured and does nothing. Outside
gunicorn (``manage.py runserver``, tests) ``ready()`` is what sets it up. ``worker_exit`` calls
``shutdown_tracing()`` so the spans still queued are exported before the worker goes.

- Resource: ``service.name`` (settings.SERVICE_NAME), ``service.version``, ``deployment.environment``,
  on top of what ``OTEL_RESOURCE_ATTRIBUTES`` adds.
- Sampler: ``ParentBased(TraceIdRatioBased(OTEL_TRACES_SAMPLER_ARG))``, ratio 1.0 by default.
- Propagation: B3 multi-header (what Envoy sidecars send), W3C tracecontext and baggage; all three are
  injected into outgoing requests, and W3C wins on extraction when a request carries both (right for
  Istio's OpenTelemetry tracer, which rewrites only ``traceparent``). With Istio's Zipkin tracer, which
  rewrites only the B3 headers, set the standard ``OTEL_PROPAGATORS=b3multi``.
- Export: OTLP over HTTP/protobuf, batched, only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set.
- Without an endpoint no SDK is installed: the instrumentation runs on OpenTelemetry's no-op tracer,
  which records nothing and costs next to nothing, yet still carries an incoming trace context (from
  an Envoy sidecar) through the request, into log lines and onto the call to the user service, the
  way Istio asks applications to forward trace headers. A request that arrives without one has no
  trace, so its lines carry no trace id.
"""

import os
import threading

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from svc_common.env import env_bool, env_float

# Probes and scrapes would otherwise make most of the traces; OTEL_PYTHON_DJANGO_EXCLUDED_URLS overrides.
DEFAULT_EXCLUDED_URLS = "/healthz/?$,/readyz/?$,/metrics/?$"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_configured = False


def configure_tracing() -> TracerProvider | None:
    """Set up propagation and instrument Django and requests, once per process, and the SDK when spans
    are exported; returns the SDK's provider, or None without one. Needs Django's settings (the
    service's name), not a set-up Django."""
    from django.conf import settings

    global _configured, _provider
    # Load the settings here, so that settings that refuse to load stop the worker with their own
    # message: OpenTelemetry's Django instrumentor would swallow the error and fall back to empty
    # settings (settings.configure()), and the service would start and answer 500s.
    _ = settings.SERVICE_NAME
    if env_bool("OTEL_SDK_DISABLED", False):
        return None
    with _lock:
        if not _configured:
            if not os.environ.get("OTEL_PROPAGATORS"):  # set, OpenTelemetry has built exactly those
                propagate.set_global_textmap(
                    CompositePropagator([B3MultiFormat(), TraceContextTextMapPropagator(), W3CBaggagePropagator()])
                )
            if exporting():
                _provider = build_provider()
                trace.set_tracer_provider(_provider)
            _instrument()
            _configured = True
        return _provider


def exporting() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def shutdown_tracing() -> None:
    """Export what is still queued and stop the exporter (gunicorn's worker_exit hook). Safe to call
    where tracing was never configured (the master) and more than once."""
    with _lock:
        if _provider is not None:
            _provider.shutdown()


def sampling_ratio() -> float:
    ratio = env_float("OTEL_TRACES_SAMPLER_ARG", 1.0, minimum=0.0)
    return min(ratio, 1.0)


def build_provider() -> TracerProvider:
    from django.conf import settings

    resource = Resource.create(
        {
            "service.name": settings.SERVICE_NAME,
            "service.version": settings.SERVICE_VERSION,
            "deployment.environment": settings.DEPLOY_ENV,
        }
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sampling_ratio())))
    # No arguments: the exporter reads the endpoint (appending /v1/traces to the base one), headers,
    # timeout and compression from the OTEL_EXPORTER_OTLP_* variables; the processor reads OTEL_BSP_*.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _instrument() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    excluded = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", DEFAULT_EXCLUDED_URLS)
    # Adds its middleware to settings.MIDDLEWARE: effective for handlers Django builds after this call.
    DjangoInstrumentor().instrument(excluded_urls=excluded)
    RequestsInstrumentor().instrument()
