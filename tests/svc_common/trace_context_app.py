"""A one-view Django app served through either way of carrying a trace context without an SDK
(tests/svc_common/test_trace_context.py runs it once per way, each in a process of its own, since
both install global state): ``instrumentor`` is ``DjangoInstrumentor`` and ``RequestsInstrumentor`` on
OpenTelemetry's no-op tracer, as configured when spans are recorded; ``middleware`` is what
``configure_tracing`` installs without an exporter (``TraceContextMiddleware``, and
``carry_trace_context`` on the outgoing call). Prints, per request, what the request's log lines and
its outgoing call would carry."""

import json
import sys

import django
import requests
import structlog
from django.conf import settings
from django.http import JsonResponse
from django.test import Client
from django.urls import path
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from requests.adapters import BaseAdapter

from svc_common.observability.log_config import add_trace_ids

OUTGOING = ("traceparent", "tracestate", "baggage", "X-B3-TraceId", "X-B3-SpanId", "X-B3-Sampled", "X-B3-ParentSpanId")


class CapturingAdapter(BaseAdapter):
    """The outgoing call's headers as sent (after the requests instrumentation injected its own)."""

    def send(self, request, **kwargs):
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps({name: request.headers.get(name) for name in OUTGOING}).encode()
        return response

    def close(self):
        pass


def work(request):
    from svc_common.observability.tracing import carry_trace_context

    session = requests.Session()
    session.mount("http://", CapturingAdapter())
    headers: dict[str, str] = {}
    carry_trace_context(headers)  # as the user client does: nothing where the instrumentation injects
    outgoing = session.get("http://user-svc.test/users/1", headers=headers).json()
    return JsonResponse({"log_line_ids": add_trace_ids(None, "info", {}), "outgoing": outgoing})


def fail(request):
    raise RuntimeError("boom")


def healthz(request):
    return JsonResponse({"log_line_ids": add_trace_ids(None, "info", {})})


class AccessLine:
    """Outermost, like the access log: what is bound to the request's log context once it is answered."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        structlog.contextvars.clear_contextvars()
        response = self.get_response(request)
        response["X-Bound"] = json.dumps(structlog.contextvars.get_contextvars(), sort_keys=True)
        structlog.contextvars.clear_contextvars()
        return response


urlpatterns = [path("work", work), path("fail", fail), path("healthz", healthz)]

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
B3 = {"HTTP_X_B3_TRACEID": "463ac35c9f6413ad48485a3953bb6124", "HTTP_X_B3_SPANID": "a2fb4a1d1a96d312",
      "HTTP_X_B3_SAMPLED": "1"}  # fmt: skip
REQUESTS = [
    ("/work", {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_BAGGAGE": "tenant=a"}),
    ("/work", B3),
    ("/work", {**B3, "HTTP_TRACEPARENT": TRACEPARENT}),
    ("/work", {}),
    ("/work", {"HTTP_TRACEPARENT": "00-garbage-01"}),
    ("/work?q=1", {"HTTP_TRACEPARENT": TRACEPARENT}),
    ("/healthz", {"HTTP_TRACEPARENT": TRACEPARENT}),
    ("/missing", {"HTTP_TRACEPARENT": TRACEPARENT}),
    ("/fail", {"HTTP_TRACEPARENT": TRACEPARENT}),
]


def main(way: str) -> None:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[f"{__name__}.AccessLine", "svc_common.api.request_guards.CommonMiddleware"],
        SERVICE_NAME="trace-context-test",
        SERVICE_VERSION="0",
        DEPLOY_ENV="test",
        LOGGING_CONFIG=None,
        APPEND_SLASH=False,
    )
    django.setup()
    from svc_common.observability import tracing

    tracing.configure_tracing()  # no exporter configured: the propagation-only middleware
    if way == "instrumentor":
        assert tracing.TRACE_CONTEXT_MIDDLEWARE in settings.MIDDLEWARE
        settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != tracing.TRACE_CONTEXT_MIDDLEWARE]
        tracing.instrument_django()  # the stock middleware, on the no-op tracer
        RequestsInstrumentor().instrument()  # and the stock client side, which injects the headers
    client = Client(raise_request_exception=False)
    seen = []
    for url, headers in REQUESTS:
        response = client.get(url, **headers)
        body = response.json() if response["Content-Type"] == "application/json" else None
        seen.append({"url": url, "status": response.status_code, "body": body, "bound": response["X-Bound"]})
    requests_instrumented = RequestsInstrumentor().is_instrumented_by_opentelemetry
    print(json.dumps({"middleware": settings.MIDDLEWARE, "requests_instrumented": requests_instrumented, "seen": seen}))


if __name__ == "__main__":
    main(sys.argv[1])
