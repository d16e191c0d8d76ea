"""Tests of what svc_common gives every service (named routes, tracing set up once, spans named after
the service), collected by each service's own suite under its own settings:
``from testsupport.platform_checks import *`` in a test module."""

import datetime as dt
import gc
import io
import json
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import DisallowedHost, ImproperlyConfigured
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.translation import gettext_lazy
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from opentelemetry import trace
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, ErrorDetail
from rest_framework.utils.serializer_helpers import ReturnDict, ReturnList

from svc_common.observability.tracing import build_provider, configure_tracing
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
    # Nothing recorded: the propagation-only middleware carries the context, once, and the Django
    # instrumentation's middleware is not installed (it is whenever an exporter is configured).
    propagation = "svc_common.observability.tracing.TraceContextMiddleware"
    assert [m for m in settings.MIDDLEWARE if m.startswith("opentelemetry.")] == []
    assert [m for m in settings.MIDDLEWARE if m == propagation] == [propagation]  # installed once
    # Right after the Host check, where the instrumentation's middleware goes too: a bad Host is
    # answered before either meets it (opentelemetry-python-contrib#1781); django-prometheus' latency
    # place is last.
    position = settings.MIDDLEWARE.index(propagation)
    assert settings.MIDDLEWARE[position - 1] == "svc_common.api.request_guards.CommonMiddleware"
    assert settings.MIDDLEWARE[-1] == "svc_common.observability.request_metrics.ViewLatencyMiddleware"


def test_exported_spans_name_this_service():
    provider = build_provider()
    try:
        assert provider.resource.attributes["service.name"] == settings.SERVICE_NAME
        assert provider.resource.attributes["service.version"] == settings.SERVICE_VERSION
    finally:
        provider.shutdown()


# In a process of its own, as gunicorn's worker is: Django's test client connects close_old_connections
# to request_started and request_finished around every request it makes, so in this process the check
# would depend on whether a test-client test ran first.
_HOUSEKEEPING_AFTER_A_REQUEST = """
import io
from django.core.wsgi import get_wsgi_application
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, reset_queries

application = get_wsgi_application()
environ = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
    "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
}
statuses = []
answer = application(environ, lambda status, *_: statuses.append(status))
b"".join(answer)
answer.close()
assert statuses == ["200 OK"], statuses
# disconnect() says whether the receiver was connected. On stderr: the log lines go to stdout.
connected = (request_started.disconnect(reset_queries), request_started.disconnect(close_old_connections),
             request_finished.disconnect(close_old_connections), request_started.has_listeners())
import sys
sys.stderr.write(f"housekeeping: {connected}\\n")
"""


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        # No database: nothing to reset or close at each request's start and end (svc_common.apps).
        ("memory", (False, False, False, False)),
        # A database: closing the connection at the end of a request is what hands it back to the pool.
        ("postgres", (True, True, True, False)),
    ],
)
def test_database_housekeeping_per_request_only_with_a_database(backend, expected):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "DJANGO_SECRET_KEY": "test-only-not-a-secret",
        "REPOSITORY_BACKEND": backend,
        "DATABASE_URL": "postgresql://nobody:nothing@127.0.0.1:9/none",  # never connected to
    }
    result = subprocess.run(
        [sys.executable, "-c", _HOUSEKEEPING_AFTER_A_REQUEST], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reported = re.findall(r"^housekeeping: (.*)$", result.stderr, re.M)
    assert reported == [str(expected)], result.stderr[-2000:]


def test_a_view_that_raises_is_counted_by_type_and_view_and_still_timed(rf):
    """Nothing a client sends makes a view raise (that would be a bug), so the exception counters are
    checked here: Django calls process_exception, then the 500 goes out through __call__."""
    from django.http import HttpResponse
    from django.urls import ResolverMatch
    from prometheus_client import REGISTRY

    from svc_common.observability.request_metrics import RequestMetricsMiddleware, ViewLatencyMiddleware

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

    middleware = RequestMetricsMiddleware(ViewLatencyMiddleware(view))
    assert middleware(request).status_code == 500
    after = samples()
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1, 1]


def test_latency_by_view_is_timed_where_django_prometheus_times_it(client):
    """From the last middleware on, as PrometheusAfterMiddleware: a request a middleware answers before
    (here the Host check's 400) is counted by status, and not timed."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    labels = {"view": "<unnamed view>", "method": "GET"}
    counted = ("django_http_responses_total_by_status_view_method_total", {"status": "400", **labels})
    timed = ("django_http_requests_latency_seconds_by_view_method_count", labels)
    before = sample(counted[0], **counted[1]), sample(timed[0], **timed[1])
    response = client.get("/healthz", HTTP_HOST="evil.example")
    assert response.status_code == 400 and "ALLOWED_HOSTS" in response.json()["detail"]
    after = sample(counted[0], **counted[1]), sample(timed[0], **timed[1])
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


# --- svc_common.api.renderers: DRF's JSONRenderer's output, encoded by orjson ----------------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits, orjson hands over to DRF
    | st.text()
    | st.sampled_from(["\u2028", "a\u2029b", "caf\xe9", "\x00", "\ud800"])  # JS separators; a lone surrogate
    | st.decimals(min_value=-(10**300), max_value=10**300, allow_nan=False)
    | st.datetimes(timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-5))]))
    | st.dates()
    | st.times()
    | st.times(timezones=st.just(dt.UTC))  # DRF's encoder refuses an aware time
    | st.uuids()
    | st.builds(ErrorDetail, st.text(), st.sampled_from(["invalid", "required"]))
    | st.builds(gettext_lazy, st.sampled_from(["This field is required.", "Not found."]))
)


def _json_documents(scalars):
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.tuples(children, children)
            | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), children, max_size=4)  # int keys: DRF's path
            | st.builds(
                lambda items: ReturnDict(items, serializer=None),
                st.dictionaries(st.text(max_size=5), children, max_size=4),
            )
            | st.builds(lambda items: ReturnList(items, serializer=None), st.lists(children, max_size=4))
        ),
        max_leaves=12,
    )


_RENDER_ARGUMENTS = st.tuples(
    st.sampled_from([None, "application/json", "application/json; indent=2", "application/json; indent=x"]),
    st.sampled_from([None, {}, {"indent": None}, {"indent": 4}]),
)


def _rendered(renderer, data, media_type, context):
    try:
        return renderer.render(data, media_type, context)
    except Exception as error:  # what DRF refuses, ours must refuse alike
        return type(error)


@hypothesis_settings(max_examples=400, deadline=None)
@given(data=_json_documents(_JSON_SCALARS), arguments=_RENDER_ARGUMENTS)
def test_the_json_renderer_writes_the_bytes_drf_writes(data, arguments):
    from rest_framework.renderers import JSONRenderer as DRFJSONRenderer

    from svc_common.api.renderers import JSONRenderer

    assert _rendered(JSONRenderer(), data, *arguments) == _rendered(DRFJSONRenderer(), data, *arguments)


@hypothesis_settings(max_examples=200, deadline=None)
@given(data=_json_documents(st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3)))
def test_the_json_renderer_writes_the_numbers_drf_writes(data):
    """orjson spells some floats its own way (1e16 where json writes 1e+16): the same numbers."""
    from rest_framework.renderers import JSONRenderer as DRFJSONRenderer

    from svc_common.api.renderers import JSONRenderer

    assert json.loads(JSONRenderer().render(data)) == json.loads(DRFJSONRenderer().render(data))


def test_the_api_answers_with_this_renderer():
    from rest_framework.settings import api_settings

    from svc_common.api.renderers import JSONRenderer

    assert api_settings.DEFAULT_RENDERER_CLASSES[0] is JSONRenderer


# --- svc_common.api.negotiation: DRF's DefaultContentNegotiation, its common case decided at once ----------

_ACCEPT_HEADERS = [
    None,  # no header: DRF reads */*
    "",
    "*/*",
    " */* ",
    "application/json",
    "application/json ",
    "APPLICATION/JSON",
    "application/json; indent=4",
    "application/json;q=0.5, text/html",
    "application/*",
    "text/html",
    "text/html,application/xhtml+xml,*/*;q=0.8",  # what a browser sends
    "application/xml",
    "text/*",
    "application/vnd.oai.openapi+json",
    "garbage",
]


def _negotiated(negotiation, request, renderers, format_suffix):
    from django.http import Http404
    from rest_framework.exceptions import NotAcceptable

    try:
        renderer, media_type = negotiation.select_renderer(request, renderers, format_suffix)
    except (NotAcceptable, Http404) as error:
        return type(error).__name__
    return type(renderer).__name__, media_type


@pytest.mark.parametrize("accept", _ACCEPT_HEADERS)
@pytest.mark.parametrize("query", ["", "format=json", "format=api", "format=xml", "page=2"])
@pytest.mark.parametrize("format_suffix", [None, "json", "api"])
def test_negotiation_chooses_what_drfs_chooses(rf, accept, query, format_suffix):
    from rest_framework.negotiation import DefaultContentNegotiation
    from rest_framework.request import Request
    from rest_framework.settings import api_settings

    from svc_common.api.negotiation import JSONFirstContentNegotiation

    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(rf.get(f"/users{'?' + query if query else ''}", **headers))
    renderers = [renderer() for renderer in api_settings.DEFAULT_RENDERER_CLASSES]
    ours = _negotiated(JSONFirstContentNegotiation(), request, renderers, format_suffix)
    drf = _negotiated(DefaultContentNegotiation(), request, renderers, format_suffix)
    assert ours == drf


# --- svc_common.api.request_guards.CommonMiddleware: ALLOWED_HOSTS up front, Content-Length ----------------


def _common(response=None):
    from svc_common.api.request_guards import CommonMiddleware

    return CommonMiddleware(lambda request: response if response is not None else HttpResponse(b"twelve bytes"))


def test_an_allowed_host_passes_and_the_answer_carries_its_length(rf):
    response = _common()(rf.get("/users/1", HTTP_HOST="127.0.0.1:8001"))
    assert (response.status_code, response["Content-Length"]) == (200, "12")


def test_a_host_not_allowed_is_refused_every_time_even_after_allowed_ones(rf):
    middleware = _common()
    for _ in range(3):
        middleware(rf.get("/users/1", HTTP_HOST="localhost"))
        with pytest.raises(DisallowedHost):  # Django's handler answers it with handler400
            middleware(rf.get("/users/1", HTTP_HOST="evil.example"))
    assert middleware.allowed_hosts == {"localhost"}


def test_a_streamed_answer_and_a_declared_length_are_left_as_they_are(rf):
    streamed = _common(StreamingHttpResponse(iter([b"a", b"b"])))(rf.get("/static/x.css", HTTP_HOST="localhost"))
    assert not streamed.has_header("Content-Length")
    declared = HttpResponse(b"abc", headers={"Content-Length": "3"})
    assert _common(declared)(rf.get("/", HTTP_HOST="localhost"))["Content-Length"] == "3"


def test_remembered_hosts_are_bounded(rf, settings):
    from svc_common.api.request_guards import REMEMBERED_HOSTS

    settings.ALLOWED_HOSTS = ["*"]
    middleware = _common()
    for number in range(REMEMBERED_HOSTS * 3):
        assert middleware(rf.get("/", HTTP_HOST=f"host-{number}.example")).status_code == 200
    assert len(middleware.allowed_hosts) == REMEMBERED_HOSTS


def test_behind_x_forwarded_host_every_request_is_checked(rf, settings):
    settings.USE_X_FORWARDED_HOST = True
    middleware = _common()
    assert middleware(rf.get("/", HTTP_HOST="evil.example", HTTP_X_FORWARDED_HOST="localhost")).status_code == 200
    with pytest.raises(DisallowedHost):
        middleware(rf.get("/", HTTP_HOST="localhost", HTTP_X_FORWARDED_HOST="evil.example"))
    assert middleware.allowed_hosts == set()


@pytest.mark.parametrize(
    ("setting", "value"),
    [("APPEND_SLASH", True), ("PREPEND_WWW", True), ("DISALLOWED_USER_AGENTS", [re.compile("bot")])],
)
def test_redirecting_settings_are_refused_rather_than_ignored(settings, setting, value):
    setattr(settings, setting, value)
    with pytest.raises(ImproperlyConfigured, match=setting):
        _common()


_HOSTS = [
    "localhost",
    "127.0.0.1:8001",
    "[::1]:8000",
    "LOCALHOST",
    "localhost.",
    "evil.example",
    "localhost:80:80",
    "bad host",
    "localhost\x00",
    "",
    None,  # no Host header: Django takes SERVER_NAME and SERVER_PORT
    "localhost",  # again, after refusals: the remembered hosts change nothing
    "127.0.0.1:8001",
]
_ANSWERS = {
    "known length": lambda: HttpResponse(b"twelve bytes"),
    "empty": lambda: HttpResponse(status=204),
    "declared length": lambda: HttpResponse(b"abc", headers={"Content-Length": "3"}),
    "streamed": lambda: StreamingHttpResponse(iter([b"a", b"b"])),
}


def _what_the_client_sees(middleware, request):
    try:
        response = middleware(request)
    except DisallowedHost:  # Django's handler answers it with handler400
        return "DisallowedHost"
    return response.status_code, response.get("Content-Length"), b"".join(response) if response.streaming else None


@pytest.mark.parametrize("allowed_hosts", [["localhost", "127.0.0.1", "[::1]"], ["*"], [".localhost"], []])
@pytest.mark.parametrize("use_x_forwarded_host", [False, True])
@pytest.mark.parametrize("answer", list(_ANSWERS))
def test_common_middleware_answers_as_djangos_does(rf, settings, allowed_hosts, use_x_forwarded_host, answer):
    """The same requests, one after another, through this CommonMiddleware and Django's."""
    from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware

    from svc_common.api.request_guards import CommonMiddleware

    settings.ALLOWED_HOSTS = allowed_hosts
    settings.USE_X_FORWARDED_HOST = use_x_forwarded_host
    ours, django = CommonMiddleware(lambda r: _ANSWERS[answer]()), DjangoCommonMiddleware(lambda r: _ANSWERS[answer]())

    def request(host):
        headers = {} if host is None else {"HTTP_HOST": host}
        if use_x_forwarded_host:
            headers["HTTP_X_FORWARDED_HOST"] = "evil.example" if host == "localhost" else "localhost"
        return rf.get("/users/1", **headers)

    for host in _HOSTS:
        assert _what_the_client_sees(ours, request(host)) == _what_the_client_sees(django, request(host)), host


def test_a_chunked_body_that_reached_django_unread_is_411_not_empty(rf):
    from svc_common.api.request_guards import BodySizeLimitMiddleware

    request = rf.generic("POST", "/users", b"", content_type="application/json", HTTP_TRANSFER_ENCODING="chunked")
    request.META.pop("CONTENT_LENGTH", None)  # what a chunked request has
    response = BodySizeLimitMiddleware(lambda r: HttpResponse(status=201))(request)
    assert response.status_code == 411 and "Content-Length" in json.loads(response.content)["detail"]


# --- svc_common.api.viewsets.DeferredAuthenticationMixin -----------------------------------------------


class _Refuse(BaseAuthentication):
    def authenticate(self, request):
        raise AuthenticationFailed("no such token")


def _probe_view(authentication_classes, reads_user):
    from rest_framework.response import Response
    from rest_framework.viewsets import ViewSet

    from svc_common.api.viewsets import DeferredAuthenticationMixin

    class Probe(DeferredAuthenticationMixin, ViewSet):
        def list(self, request):
            return Response({"user": repr(request.user) if reads_user else "unread"})

    Probe.authentication_classes = authentication_classes
    return Probe.as_view({"get": "list"})


@pytest.mark.parametrize("reads_user", [False, True])
def test_with_authentication_classes_a_request_is_authenticated_up_front(rf, reads_user):
    response = _probe_view([_Refuse], reads_user)(rf.get("/probe"))
    assert response.status_code == 403 and "no such token" in str(response.data)


def test_without_authentication_classes_request_user_is_the_anonymous_user_when_read(rf):
    for reads_user, seen in ((True, "None"), (False, "unread")):
        response = _probe_view([], reads_user)(rf.get("/probe"))
        assert (response.status_code, response.data) == (200, {"user": seen})


def test_the_api_viewsets_are_service_viewsets():
    from django.urls import get_resolver

    from svc_common.api.viewsets import ServiceViewSet

    viewsets = {getattr(p.callback, "cls", None) for p in get_resolver().url_patterns} - {None}
    api = [cls for cls in viewsets if hasattr(cls, "get_repository")]
    assert api and all(issubclass(cls, ServiceViewSet) for cls in api)


# --- svc_common.api.viewsets.AcyclicRequestMixin ---------------------------------------------------------


def _request_objects_left_to_the_collector(method: str, path: str, body: bytes = b"", accept: str = "*/*") -> list[str]:
    """Serve one request through the WSGI application, as gunicorn does, and name the request's
    objects that only the garbage collector could free (they were part of a reference cycle)."""
    from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    application = WSGIHandler()
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_ACCEPT": accept,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage
    try:
        answer = application({**environ, "wsgi.input": io.BytesIO(body)}, lambda status, *_: statuses.append(status))
        b"".join(answer)
        answer.close()  # what the server does once the answer is sent
        del answer
        gc.collect()
        kinds = (WSGIRequest, Request, Response, APIView)
        left = [type(thing).__name__ for thing in gc.garbage if isinstance(thing, kinds)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert statuses and not statuses[0].startswith("5"), statuses
    return left


@pytest.mark.parametrize(
    ("method", "route", "body", "accept"),
    [
        # Not the browsable API: its forms are serializers whose bound fields point back at them
        # (DRF's own cycles, on a page for people), left to the collector.
        ("GET", "list", b"", "*/*"),
        ("GET", "detail", b"", "*/*"),  # 404 through the exception handler
        ("POST", "list", b'{"name": ', "*/*"),  # 400: a parse error
        ("POST", "list", b"{}", "*/*"),  # 400: validation
    ],
)
def test_an_answered_request_leaves_no_reference_cycle(method, route, body, accept):
    from django.urls import reverse

    resource = settings.SERVICE_NAME.removesuffix("-svc")
    path = reverse(f"{resource}-{route}", kwargs={"pk": "424242"} if route == "detail" else None)
    assert _request_objects_left_to_the_collector(method, path, body, accept) == []


def _api_viewsets():
    from django.urls import get_resolver

    viewsets = {getattr(p.callback, "cls", None) for p in get_resolver().url_patterns} - {None}
    return sorted((cls for cls in viewsets if hasattr(cls, "get_repository")), key=lambda cls: cls.__name__)


@pytest.mark.parametrize(
    ("actions", "method", "body", "accept"),
    [
        ({"get": "list"}, "GET", b"", "application/json"),
        ({"get": "list"}, "GET", b"", "text/html"),  # the browsable API
        ({"get": "retrieve"}, "GET", b"", "*/*"),  # 404 through the exception handler
        ({"post": "create"}, "POST", b'{"name": ', "*/*"),  # 400: a parse error
        ({"post": "create"}, "POST", b"{}", "*/*"),  # 400: validation
        ({"post": "create"}, "POST", b"{}", "application/xml"),  # 406
    ],
)
def test_an_acyclic_view_answers_what_drfs_dispatch_answers(rf, actions, method, body, accept):
    """AcyclicRequestMixin.dispatch against DRF's own (APIView.dispatch) on the same requests. The
    views run without the middleware that clears the log context after each request, so whatever a
    view binds (its ``user_id``) is cleared here, or it would follow later tests' log lines."""
    import structlog
    from rest_framework.views import APIView

    for viewset in _api_viewsets():

        class Stock(viewset):  # type: ignore[valid-type, misc]
            dispatch = APIView.dispatch

        answers = []
        for cls in (viewset, Stock):
            request = rf.generic(method, "/probe", body, content_type="application/json", HTTP_ACCEPT=accept)
            response = cls.as_view(actions)(request, **({"pk": "424242"} if "retrieve" in actions.values() else {}))
            response.render()  # Django's handler renders a response its view left unrendered
            content = response.content if "json" in response["Content-Type"] else None  # forms differ per request
            answers.append((response.status_code, sorted(response.items()), content))
            structlog.contextvars.clear_contextvars()
        assert answers[0] == answers[1], viewset.__name__


# --- svc_common.server.gunicorn_worker.load_lazy_parts ---------------------------------------------------


def test_the_worker_loads_the_urlconf_before_it_freezes_the_app():
    """What the first request would import, the worker imports before gc.freeze(), out of the
    collector's reach (a process of its own: this one has long imported everything)."""
    check = (
        "import sys, django; django.setup()\n"
        "from django.conf import settings\n"
        "from svc_common.server.gunicorn_worker import load_lazy_parts\n"
        "assert settings.ROOT_URLCONF not in sys.modules, 'imported before the first request'\n"
        "load_lazy_parts()\n"
        "assert settings.ROOT_URLCONF in sys.modules and 'drf_spectacular.views' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
