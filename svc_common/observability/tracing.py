"""OpenTelemetry tracing for both services: set up once per process, in each gunicorn worker.

The app's ``AppConfig.ready()`` calls ``configure_tracing()``: in a gunicorn worker that is after gevent
has patched the standard library (so the exporter's thread is a greenlet and its sockets cooperate)
and before Django builds its middleware chain (``ServerSpanMiddleware`` reads the provider).
``worker_exit`` calls ``shutdown_tracing()`` so the spans still queued are exported before the worker goes.

- Resource: ``service.name`` (settings.SERVICE_NAME), ``service.version``, ``deployment.environment``,
  on top of what ``OTEL_RESOURCE_ATTRIBUTES`` adds.
- Sampler: ``ParentBased(TraceIdRatioBased(OTEL_TRACES_SAMPLER_ARG))``, ratio 1.0 by default.
- Propagation: B3 multi-header (what Envoy sidecars send), W3C tracecontext and baggage; all three are
  injected into outgoing calls (``client_span``), and W3C wins on extraction when a request carries both (right for
  Istio's OpenTelemetry tracer, which rewrites only ``traceparent``). With Istio's Zipkin tracer, which
  rewrites only the B3 headers, set the standard ``OTEL_PROPAGATORS=b3multi``.
- Server spans: ``ServerSpanMiddleware`` (below), in each service's MIDDLEWARE, rather than
  opentelemetry-instrumentation-django's middleware. Profiled, that one cost about a quarter of a
  GET's CPU time even with the no-op tracer: it rebuilds the absolute URI four times per request (to
  test the excluded URLs), resolves the URL a second time for the span's name, and collects every
  request attribute before it knows whether the span records. This one tests the path once, takes
  the route Django already resolved, and collects attributes only for a span that records, with
  opentelemetry-instrumentation-wsgi's own functions, so the attributes are the same.
- Recording: with an SDK, the server and client spans are ``svc_common.observability.span_recorder``'s, on the SDK's
  provider (its sampler, ids, resource, limits, batch processor): the SDK's own span cost about 40 µs
  more per span under gevent. Any other tracer's spans are the SDK's.
- Export: OTLP over HTTP/protobuf (encoded by ``svc_common.observability.span_encoding``), batched, only when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set.
- Without an endpoint no SDK is installed: the instrumentation runs on OpenTelemetry's no-op tracer,
  which records nothing and costs next to nothing, yet still carries an incoming trace context (from
  an Envoy sidecar) through the request, into log lines and onto the call to the user service, the
  way Istio asks applications to forward trace headers. A request that arrives without one has no
  trace, so its lines carry no trace id.
"""

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponseBase
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation._semconv import (
    _set_http_net_peer_name_server,
    _set_http_peer_ip_server,
    _set_http_peer_port_server,
    _set_http_target,
    _StabilityMode,
)
from opentelemetry.instrumentation.utils import http_status_to_status_code
from opentelemetry.instrumentation.wsgi import collect_request_attributes, wsgi_getter
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.semconv._incubating.attributes.http_attributes import HTTP_STATUS_CODE, HTTP_TARGET
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.http import ExcludeList, parse_excluded_urls

from svc_common.api.route_names import route_of
from svc_common.env import env_bool, env_float
from svc_common.observability import span_encoding
from svc_common.observability.span_recorder import SpanRecorder

# Probes and scrapes would otherwise make most of the traces; OTEL_PYTHON_DJANGO_EXCLUDED_URLS overrides.
DEFAULT_EXCLUDED_URLS = "/healthz/?$,/readyz/?$,/metrics/?$"

_logger = logging.getLogger(__name__)

# The server and client spans' tracer: OpenTelemetry's (no-op without an SDK) until configure_tracing
# sets up export, then the span recorder on the SDK's provider.
_tracer: trace.Tracer = trace.get_tracer(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None
_configured = False


def configure_tracing() -> TracerProvider | None:
    """Set up propagation, once per process, and the SDK when spans are exported; returns the SDK's
    provider, or None without one. The server spans come from ``ServerSpanMiddleware``, the client
    spans from ``client_span``. Needs Django's settings (the service's name), not a set-up Django."""
    global _configured, _provider, _tracer
    if env_bool("OTEL_SDK_DISABLED", False):
        return None
    with _lock:
        if not _configured:
            if not os.environ.get("OTEL_PROPAGATORS"):  # set, OpenTelemetry has built exactly those
                propagate.set_global_textmap(
                    CompositePropagator([B3MultiFormat(), TraceContextTextMapPropagator(), W3CBaggagePropagator()])
                )
            if exporting():
                _provider, _tracer = build_provider()
                trace.set_tracer_provider(_provider)
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


def build_provider() -> tuple[TracerProvider, SpanRecorder]:
    """The SDK's provider, exporting in batches, and the tracer of this project's own spans, which
    samples, describes and exports through it (``svc_common.observability.span_recorder``)."""
    from django.conf import settings

    resource = HashedOnceResource(
        Resource.create(
            {
                "service.name": settings.SERVICE_NAME,
                "service.version": settings.SERVICE_VERSION,
                "deployment.environment": settings.DEPLOY_ENV,
            }
        )
    )
    limits = SpanLimits()  # OTEL_SPAN_*_LIMIT and OTEL_ATTRIBUTE_*_LIMIT
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(sampling_ratio())), span_limits=limits
    )
    # The exporter reads the endpoint (appending /v1/traces to the base one), headers, timeout and
    # compression from the OTEL_EXPORTER_OTLP_* variables; the processor reads OTEL_BSP_*.
    processor = BatchSpanProcessor(DirectlyEncodingOTLPSpanExporter())
    provider.add_span_processor(processor)
    return provider, SpanRecorder(provider, processor, limits, __name__)


class DirectlyEncodingOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (endpoint, headers, compression, timeout, retries, its own
    metrics: all its own), with the batch encoded by ``svc_common.observability.span_encoding``: 17-29 µs a span
    instead of 68-79 (a GET's server span, 64 a batch). ``export`` is the SDK's, but for that call.

    The export runs on the worker's event loop, so the encoder steps aside every ``PAUSE_EVERY``
    spans (about 2 ms of encoding): the SDK's batch of 512 then holds no request up for longer than
    a batch of 64 would, and each POST, about 1 ms of the requests library's CPU time whatever its
    size, carries 512 spans instead of 64."""

    PAUSE_EVERY = 64

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = span_encoding.encode_spans(spans, pause_every=self.PAUSE_EVERY)
            except Exception as error:
                _logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(serialized_data, self._max_request_size):
                _logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(serialized_data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} bytes exceeds max_request_size "
                    f"{self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            export_result = self._client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                if export_result.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


class HashedOnceResource(Resource):
    """A Resource that works out its hash once. The SDK's hashes by dumping every attribute to JSON,
    and the OTLP encoder hashes the resource of each span it encodes (to group a batch by resource):
    measured, that was 25-35 µs of the 90-100 µs a span took to encode, on the worker's event loop.
    A Resource cannot change once made, so neither can its hash."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


@contextlib.contextmanager
def client_span(method: str, url: str, headers: dict[str, str]) -> Iterator[Span]:
    """One outgoing HTTP call's CLIENT span, current while the block runs, with the trace headers
    (B3, W3C tracecontext and baggage) added to ``headers``, which the block then sends. Named and
    described as opentelemetry-instrumentation-requests does (``GET``, ``http.method``, ``http.url``);
    an exception in the block is recorded and marks the span as an error. Without an SDK the span
    records nothing, and the incoming trace context is still carried on; with no SDK and nothing to
    carry on (a request that came without trace headers), nothing is made at all: the no-op span's
    context switching was 3-4 % of a POST /orders, profiled."""
    if _provider is None and not trace.get_current_span().get_span_context().is_valid and not baggage.get_all():
        yield INVALID_SPAN
        return
    span = _tracer.start_span(method, kind=SpanKind.CLIENT, attributes={"http.method": method, "http.url": url})
    with CurrentSpan(span):
        propagate.inject(headers)
        yield span


class CurrentSpan:
    """``span`` current while the block runs (in ``parent``, else in the current context), ended after
    it; an exception in the block is recorded and marks the span as an error. What the SDK's
    ``start_as_current_span`` and ``trace.use_span(end_on_exit=True, record_exception=True,
    set_status_on_exception=True)`` do, with one context attached instead of two and no generator."""

    __slots__ = ("parent", "span", "token")

    def __init__(self, span: Span, parent: Context | None = None) -> None:
        self.span, self.parent = span, parent

    def __enter__(self) -> None:
        self.token = context.attach(trace.set_span_in_context(self.span, self.parent))

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        try:
            if error is not None and self.span.is_recording():
                self.span.record_exception(error)
                self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        finally:
            self.span.end()
            context.detach(self.token)


def record_response(span: Span, status: int) -> None:
    """The answer's status on a ``client_span``; for a client, 4xx and 5xx are errors."""
    if span.is_recording():
        span.set_attribute("http.status_code", status)
        code = http_status_to_status_code(status)
        if code is not StatusCode.UNSET:  # a new span's status already is UNSET: no call, no lock
            span.set_status(Status(code))


def excluded_urls() -> ExcludeList:
    """``OTEL_PYTHON_DJANGO_EXCLUDED_URLS`` (or ``OTEL_PYTHON_EXCLUDED_URLS``), else probes and scrapes."""
    configured = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    return parse_excluded_urls(configured or DEFAULT_EXCLUDED_URLS)


class ServerSpanMiddleware:
    """The request's SERVER span, child of the trace context the request carries (Envoy's B3 or W3C
    headers), current while the request runs: its log lines name it, and the call to the user
    service carries it on. Without an SDK (no OTLP endpoint) the span records nothing and costs next
    to nothing, yet the incoming context is carried all the same. Named ``METHOD /route/{pk}`` once
    Django has resolved the route; HTTP attributes as opentelemetry-instrumentation-wsgi sets them;
    a 5xx or an exception marks it as an error. Not used at all with ``OTEL_SDK_DISABLED=true``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        if env_bool("OTEL_SDK_DISABLED", False):
            raise MiddlewareNotUsed("OTEL_SDK_DISABLED=true")
        self.get_response = get_response
        self.excluded = excluded_urls()
        # Without an SDK a request that carries no trace context has no span to make, record or pass on.
        self.records = _provider is not None
        self.context_headers = tuple(
            "HTTP_" + name.upper().replace("-", "_") for name in propagate.get_global_textmap().fields
        )

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        carries_context = any(map(request.META.__contains__, self.context_headers))
        if not (self.records or carries_context) or self.excluded.url_disabled(request.path):
            return self.get_response(request)
        # A request without trace headers starts a trace of its own (what extracting from none
        # gives, without asking each propagator).
        parent = propagate.extract(request.META, getter=wsgi_getter) if carries_context else Context()
        span = _tracer.start_span(request.method or "HTTP", context=parent, kind=SpanKind.SERVER)
        with CurrentSpan(span, parent):
            response = self.get_response(request)
            if span.is_recording():
                self._describe(span, request, response)
            return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """A view's exception becomes a 500 response before it reaches ``__call__``: record it here."""
        span = trace.get_current_span()
        if span.is_recording():
            span.record_exception(exception)

    @staticmethod
    def _describe(span: Any, request: HttpRequest, response: HttpResponseBase) -> None:
        attributes = server_request_attributes(request.META)
        match = request.resolver_match
        route = route_of(str(match.route)) if match is not None and match.route else None
        if route:
            attributes["http.route"] = route
        # What add_response_attributes does (old semantic conventions, a server span), in the same
        # call as the rest: the status code, and ERROR for a 5xx.
        attributes[HTTP_STATUS_CODE] = response.status_code
        span.set_attributes(attributes)
        if route:
            span.update_name(f"{request.method} {route}")
        status = http_status_to_status_code(response.status_code, server_span=True)
        if status is not StatusCode.UNSET:  # a new span's status already is UNSET: no call, no lock
            span.set_status(Status(status))


# The request attributes that repeat from request to request, as opentelemetry-instrumentation-wsgi
# collects them: method, server name, scheme, host, port, user agent, protocol.
_REPEATING_REQUEST_KEYS = (
    "REQUEST_METHOD",
    "SERVER_NAME",
    "wsgi.url_scheme",
    "HTTP_HOST",
    "SERVER_PORT",
    "HTTP_USER_AGENT",
    "SERVER_PROTOCOL",
)


def server_request_attributes(environ: dict[str, Any]) -> dict[str, Any]:
    """What opentelemetry-instrumentation-wsgi's ``collect_request_attributes(environ)`` returns, in
    two fifths of the time (4 µs instead of 10.5, a GET under gunicorn): the attributes that repeat from
    request to request are collected by that very function once per combination
    (``_repeating_request_attributes``); the target and the peer's address and port per request, by
    the functions it uses for them."""
    target = environ.get("RAW_URI")
    if target is None:
        target = environ.get("REQUEST_URI")
    if not target:  # the URL is rebuilt from the environ (not under gunicorn): no shortcut
        return dict(collect_request_attributes(environ))
    attributes = dict(_repeating_request_attributes(*map(environ.get, _REPEATING_REQUEST_KEYS)))
    mode = _StabilityMode.DEFAULT
    _set_http_target(attributes, target, environ.get("PATH_INFO"), environ.get("QUERY_STRING"), mode)
    remote_addr = environ.get("REMOTE_ADDR")
    if remote_addr:
        _set_http_peer_ip_server(attributes, remote_addr, mode)
    peer_port = environ.get("REMOTE_PORT")
    if peer_port:
        _set_http_peer_port_server(attributes, peer_port, mode)
    remote_host = environ.get("REMOTE_HOST")
    if remote_host and remote_host != remote_addr:
        _set_http_net_peer_name_server(attributes, remote_host, mode)
    return attributes


@functools.lru_cache(maxsize=512)  # bounded: the host and user agent are the client's to choose
def _repeating_request_attributes(*values: Any) -> dict[str, Any]:
    environ = {key: value for key, value in zip(_REPEATING_REQUEST_KEYS, values, strict=True) if value is not None}
    environ["RAW_URI"] = "/"  # a target, so that no URL is rebuilt; the request's own replaces it
    attributes = dict(collect_request_attributes(environ))
    del attributes[HTTP_TARGET]
    return attributes
