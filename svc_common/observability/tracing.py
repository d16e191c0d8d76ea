"""OpenTelemetry tracing for both services, with the stock pieces: set up once per process, in each
gunicorn worker.

The app's ``AppConfig.ready()`` calls ``configure_tracing()``: in a gunicorn worker that is after gevent
has patched the standard library (so the batch processor's thread is a greenlet and the exporter's
sockets cooperate) and before Django builds its middleware chain (``DjangoInstrumentor`` adds its
middleware to ``settings.MIDDLEWARE``). ``worker_exit`` calls ``shutdown_tracing()`` so the spans
still queued are exported before the worker goes.

- Server spans: opentelemetry-instrumentation-django (``DjangoInstrumentor``), its middleware placed
  right after the Host check (``svc_common.api.request_guards.CommonMiddleware``): the instrumentation
  calls ``request.build_absolute_uri()`` to test its excluded URLs, which raises ``DisallowedHost`` for
  a Host outside ``ALLOWED_HOSTS`` (open-telemetry/opentelemetry-python-contrib#1781; the upstream
  answer is its ``middleware_position`` option). Placed after the check, it only ever sees a Host the
  check let through, and a bad one gets the service's JSON 400 from the check, with its access line.
  Its ``response_hook`` names the span after the route, ``GET /users/{pk}`` (the instrumentation would
  name it after Django's pattern, ``GET ^users/(?P<pk>[^/.]+)/?$``), and its ``request_hook`` binds the
  trace and span ids to the request's log context, so the access line, written by a middleware outside
  the span, carries them too.
- Client spans: opentelemetry-instrumentation-requests (``RequestsInstrumentor``), around the user
  check's calls (``orders.user_client``), which also injects the trace headers.
- Both instrumentations read the standard variables: ``OTEL_SEMCONV_STABILITY_OPT_IN``,
  ``OTEL_PYTHON_DJANGO_EXCLUDED_URLS`` / ``OTEL_PYTHON_EXCLUDED_URLS`` (probes and scrapes by default,
  ``DEFAULT_EXCLUDED_URLS``), ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*``, and so on.
- Recording and export: the SDK's ``TracerProvider`` (sampler from ``OTEL_TRACES_SAMPLER`` and
  ``OTEL_TRACES_SAMPLER_ARG``, parent-based always-on by default; span limits from ``OTEL_SPAN_*``),
  ``BatchSpanProcessor`` (``OTEL_BSP_*``) and ``OTLPSpanExporter`` over HTTP/protobuf
  (``OTEL_EXPORTER_OTLP_*``), only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set. Resource: ``service.name`` (settings.SERVICE_NAME),
  ``service.version``, ``deployment.environment``, on top of ``OTEL_RESOURCE_ATTRIBUTES``.
- Propagation: B3 multi-header (what Envoy sidecars send), W3C tracecontext and baggage, unless
  ``OTEL_PROPAGATORS`` names others; all three are injected into outgoing calls, and W3C wins on
  extraction when a request carries both (right for Istio's OpenTelemetry tracer, which rewrites only
  ``traceparent``). With Istio's Zipkin tracer, which rewrites only the B3 headers, set
  ``OTEL_PROPAGATORS=b3multi``.
- Without an endpoint no SDK is installed and nothing is recorded: the only job left on the server side
  is to carry an incoming trace context (an Envoy sidecar's) through the request, into log lines and
  onto the call to the user service, the way Istio asks applications to forward trace headers. There
  ``TraceContextMiddleware`` does that with OpenTelemetry's public API, as its documentation shows
  manual propagation (``propagate.extract`` with the WSGI instrumentation's public ``wsgi_getter``,
  ``context.attach``/``detach``), instead of ``DjangoInstrumentor`` on the no-op tracer, which did the
  same and cost some 580k instructions per request for it (docs/benchmarks.md, "Making the stock pieces
  cheaper"). It reproduces what the instrumentation's middleware does on the no-op tracer: the same
  excluded URLs (``OTEL_PYTHON_DJANGO_EXCLUDED_URLS``, ``OTEL_PYTHON_EXCLUDED_URLS``, matched on the
  same URL), the extracted context current for the rest of the request (so the same trace and span
  ids on log lines and the same headers injected by ``RequestsInstrumentor`` on the user check), the
  request hook's ids bound for the access line, nothing for a request that brought no context, and it
  honours ``OTEL_PYTHON_DJANGO_INSTRUMENT=False`` and ``OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION`` as
  the instrumentation does. tests/svc_common/test_trace_context.py compares the two on the same
  requests. As soon as spans are recorded (an endpoint is set) it is ``DjangoInstrumentor``, always:
  the choice follows the production setting, whether an exporter is configured.
  On the client side likewise: with spans recorded, ``RequestsInstrumentor`` makes each call's CLIENT
  span and injects its context; without, nothing would be recorded and its only effect on the no-op
  tracer is to inject the current context's headers, at about 200-290 µs of CPU a call (measured on a
  loop of ``Session.send``; docs/benchmarks.md), so it is not installed and ``carry_trace_context``
  injects them (``propagate.inject``, the API's documented manual propagation). The user client calls
  it on every attempt; it does nothing where the instrumentation injects.
  ``OTEL_SDK_DISABLED=true`` turns all of it off, propagation included.
"""

import os
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from opentelemetry import context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.django.environment_variables import OTEL_PYTHON_DJANGO_INSTRUMENT
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.wsgi import wsgi_getter
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.http import ExcludeList, get_excluded_urls, parse_excluded_urls, sanitize_method

from svc_common.api.route_names import route_of
from svc_common.env import env_bool

# Probes and scrapes would otherwise make most of the traces; OTEL_PYTHON_DJANGO_EXCLUDED_URLS overrides.
DEFAULT_EXCLUDED_URLS = "/healthz/?$,/readyz/?$,/metrics/?$"
# The middleware that checks the Host header: the instrumentation's goes right after it (see above).
HOST_CHECK_MIDDLEWARE = "svc_common.api.request_guards.CommonMiddleware"
# The instrumentation reads it by this name (no constant in its environment_variables module).
OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION = "OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION"
# What carries an incoming trace context when no span is recorded (see above).
TRACE_CONTEXT_MIDDLEWARE = "svc_common.observability.tracing.TraceContextMiddleware"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_configured = False


def configure_tracing() -> TracerProvider | None:
    """Set up propagation and both instrumentations, once per process, and the SDK when spans are
    exported; returns the SDK's provider, or None without one. Needs Django's settings (the service's
    name, MIDDLEWARE), before Django builds its middleware chain."""
    global _configured, _provider
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
                instrument_django()
                RequestsInstrumentor().instrument()
            elif os.environ.get(OTEL_PYTHON_DJANGO_INSTRUMENT) != "False":  # the instrumentation's own test
                settings.MIDDLEWARE = with_trace_context_middleware(list(settings.MIDDLEWARE))
            _configured = True
        return _provider


def instrument_django() -> None:
    """Server spans from ``DjangoInstrumentor``, its middleware after the Host check, with our hooks."""
    DjangoInstrumentor().instrument(
        middleware_position=middleware_position(list(settings.MIDDLEWARE)),
        excluded_urls=None if configured_excluded_urls() else DEFAULT_EXCLUDED_URLS,
        request_hook=bind_trace_ids,
        response_hook=name_by_route,
    )


def exporting() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configured_excluded_urls() -> str | None:
    """What the Django instrumentation reads by itself, when set."""
    return os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")


def build_provider() -> TracerProvider:
    """The SDK's provider (sampler and limits from the OTEL_* variables), exporting in batches over
    OTLP/HTTP (endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*; OTEL_BSP_*)."""
    resource = Resource.create(
        {
            "service.name": settings.SERVICE_NAME,
            "service.version": settings.SERVICE_VERSION,
            "deployment.environment": settings.DEPLOY_ENV,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def shutdown_tracing() -> None:
    """Export what is still queued and stop the exporter (gunicorn's worker_exit hook). Safe to call
    where tracing was never configured (the master) and more than once."""
    with _lock:
        if _provider is not None:
            _provider.shutdown()


def middleware_position(middleware: list[str]) -> int:
    """Right after the Host check, or first when there is none (the instrumentation's default).
    ``OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION``, when set, still wins: the instrumentation reads it."""
    try:
        return middleware.index(HOST_CHECK_MIDDLEWARE) + 1
    except ValueError:
        return 0


def with_trace_context_middleware(middleware: list[str]) -> list[str]:
    """``middleware`` with ``TraceContextMiddleware`` where ``DjangoInstrumentor`` would put its own:
    ``OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION`` when it is a number (first when out of range), else
    right after the Host check."""
    try:
        position = int(os.environ.get(OTEL_PYTHON_DJANGO_MIDDLEWARE_POSITION, ""))
    except ValueError:
        position = middleware_position(middleware)
    if not 0 <= position <= len(middleware):
        position = 0
    return [*middleware[:position], TRACE_CONTEXT_MIDDLEWARE, *middleware[position:]]


def excluded_urls() -> ExcludeList:
    """The URLs neither traced nor given a trace context, read as the Django instrumentation reads them."""
    return get_excluded_urls("DJANGO") if configured_excluded_urls() else parse_excluded_urls(DEFAULT_EXCLUDED_URLS)


class TraceContextMiddleware:
    """Carries an incoming trace context (B3 or W3C headers, through the global propagator) through the
    request when no span is recorded: what ``DjangoInstrumentor``'s middleware does on OpenTelemetry's
    no-op tracer (see the module's docstring), with the public API for manual propagation."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.excluded_urls = excluded_urls()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The instrumentation matches its excluded URLs on the URL without the query string.
        if self.excluded_urls.url_disabled(request.build_absolute_uri("?")):
            response: HttpResponse = self.get_response(request)
            return response
        token = context.attach(propagate.extract(request.META, getter=wsgi_getter))
        try:
            bind_trace_ids(trace.get_current_span(), request)
            response = self.get_response(request)
        finally:
            context.detach(token)
        return response


def carry_trace_context(headers: MutableMapping[str, str]) -> None:
    """Put the current trace context (B3, W3C tracecontext and baggage, as ``OTEL_PROPAGATORS`` says) on
    an outgoing call's ``headers`` when no client span will: when ``RequestsInstrumentor`` is
    installed (spans recorded) it injects its own span's context and this does nothing. On the no-op
    tracer the instrumentation's span has the current context as its own, so the headers are the
    same; tests/svc_common/test_trace_context.py compares the two on the same requests."""
    if not RequestsInstrumentor().is_instrumented_by_opentelemetry:
        propagate.inject(headers)


def bind_trace_ids(span: Span, request: HttpRequest) -> None:
    """The Django instrumentation's request hook: the server span's ids on every log line of the
    request, the access line included (written after the span has ended). None without a trace: a
    request that came without trace context, with no SDK to start one."""
    span_context = span.get_span_context()
    if span_context.is_valid:
        structlog.contextvars.bind_contextvars(
            trace_id=format(span_context.trace_id, "032x"), span_id=format(span_context.span_id, "016x")
        )


def name_by_route(span: Span, request: HttpRequest, response: HttpResponse) -> None:
    """The Django instrumentation's response hook: ``METHOD /route`` (``GET /users/{pk}``) as span name
    and ``http.route``, the shape log lines and metrics use, instead of Django's regex pattern."""
    if not span.is_recording():
        return
    match = request.resolver_match
    if match is None or not match.route:
        return
    route = route_of(str(match.route))
    span.set_attribute("http.route", route)
    method = sanitize_method((request.method or "").strip())
    if method and method != "_OTHER":
        span.update_name(f"{method} {route}")
