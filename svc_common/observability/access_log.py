"""One log line per request: django-structlog's ``request_finished``, carrying what an operator filters on.

django-structlog's RequestMiddleware binds the request id (an incoming x-request-id, or a new one) for
every line of the request and writes ``request_started`` and ``request_finished``. The first is logged
below INFO (``DJANGO_STRUCTLOG_STATUS_START_LOG_LEVEL``), so it is not written; the second is the
request's access line: method, path (no query string), route, status, duration_ms, bytes, peer and pid,
beside what every line has (time, level, service, request_id, trace_id, span_id, and the user or order
id once a view has bound it). Gunicorn's own access log is off: it would be a second line per request.

``AccessLogMiddleware`` is that middleware with its common case made cheap (see its docstring); the
cases it leaves to django-structlog get the same fields through django-structlog's documented
signals (``connect``).
"""

import os
import random
import time
from collections.abc import Callable
from typing import Any

import structlog
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django_structlog import signals
from django_structlog.app_settings import app_settings
from django_structlog.middlewares.request import RequestMiddleware
from django_structlog.middlewares.request import logger as access_logger

from svc_common.api.route_names import route_of

_STARTED_AT = "_svc_common_started_at"
_VIEW_RAISED = "_svc_common_view_raised"
# RFC 9562 version 4: version nibble 4, variant bits 10.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random version-4 UUID, as django-structlog makes, from the random module's generator
    (reseeded in each forked worker) rather than from os.urandom: a request id is a correlation key,
    not a secret, and ``uuid.uuid4()`` was 2 % of a GET's profile."""
    digits = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def mark_start(request: HttpRequest, **_: Any) -> None:
    setattr(request, _STARTED_AT, time.perf_counter())


def describe_response(
    request: HttpRequest, response: HttpResponse | StreamingHttpResponse, log_kwargs: dict[str, Any], **_: Any
) -> None:
    log_kwargs.pop("request", None)  # "METHOD path?query": split into fields below, query left out
    log_kwargs.pop("code", None)
    log_kwargs.update(access_fields(request, response))


def access_fields(request: HttpRequest, response: HttpResponse | StreamingHttpResponse) -> dict[str, Any]:
    started_at = getattr(request, _STARTED_AT, None)
    match = request.resolver_match
    return {
        "method": request.method,
        "path": request.path,
        "route": route_of(str(match.route)) if match is not None else None,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - started_at) * 1000, 3) if started_at is not None else None,
        "bytes": len(response.content) if isinstance(response, HttpResponse) else None,
        "peer": request.META.get("REMOTE_ADDR"),
        "pid": os.getpid(),  # which gunicorn worker served it
    }


class AccessLogMiddleware(RequestMiddleware):
    """django-structlog's ``RequestMiddleware`` (django_structlog.middlewares.request), writing the
    common request's lines itself.

    What it reproduces, for a synchronous request whose view returned a response that is not
    streamed, with django-structlog's IP and user id logging off (the services' settings): the
    request id rule (``x-request-id`` when ``DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID``, else a new
    version-4 UUID; ``x-correlation-id`` likewise), bound for every line of the request and cleared
    after it; ``request_started`` at ``DJANGO_STRUCTLOG_STATUS_START_LOG_LEVEL`` and
    ``request_finished`` at the level for the status class, on django-structlog's own logger; the
    fields its signals' receivers above give them (``describe_response``). Everything else goes to
    django-structlog's own code, unchanged: a request whose view raised (``request_failed``, told
    by Django's ``got_request_exception``), a streamed response, IP or user id logging, async
    requests. testsupport/access_log_checks.py compares its lines with django-structlog's on the
    same requests.

    Why: profiled on a GET, the stock middleware was two fifths of the request's CPU time, most of
    it spent on nothing this service uses: building the full header mapping to read one header,
    building and sending a ``request_started`` event only for its level to drop it, and two signal
    dispatches to reach the receivers above. Here the request id and fields come straight from
    ``request.META`` and ``access_fields``, django-structlog's settings are read once, and
    ``request_started`` is built only when its level is on. It imports only django-structlog's
    public names.
    """

    sync_capable = True
    async_capable = False  # the services are WSGI apps (gunicorn's gevent worker)

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        super().__init__(get_response)
        # What this class writes itself; other settings leave every request to django-structlog.
        self.own_lines = not (app_settings.IP_LOGGING_ENABLED or app_settings.USER_ID_FIELD)
        # django-structlog's settings, read once: its app_settings look each one up in Django's
        # settings on every access, most of them missing (a caught AttributeError each), six a request.
        self.trust_request_id = app_settings.TRUST_UPSTREAM_REQUEST_ID
        self.trust_correlation_id = app_settings.TRUST_UPSTREAM_CORRELATION_ID
        self.start_level = app_settings.STATUS_START_LOG_LEVEL
        self.levels_by_class = {
            2: app_settings.STATUS_2XX_LOG_LEVEL,
            4: app_settings.STATUS_4XX_LOG_LEVEL,
            5: app_settings.STATUS_5XX_LOG_LEVEL,
        }
        self.default_level = app_settings.STATUS_DEFAULT_LOG_LEVEL

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.prepare(request)
        response: HttpResponse = self.get_response(request)  # type: ignore[assignment]  # sync only
        self.handle_response(request, response)
        return response

    def prepare(self, request: HttpRequest) -> None:
        if not self.own_lines:
            return super().prepare(request)
        request_id = self.trust_request_id and request.META.get("HTTP_X_REQUEST_ID")
        structlog.contextvars.bind_contextvars(request_id=request_id or new_request_id())
        if self.trust_correlation_id and request.META.get("HTTP_X_CORRELATION_ID"):
            structlog.contextvars.bind_contextvars(correlation_id=request.META["HTTP_X_CORRELATION_ID"])
        mark_start(request)
        level = self.start_level
        if access_logger.is_enabled_for(level):  # the level the logger itself applies
            access_logger.log(
                level,
                "request_started",
                request=self.format_request(request),
                user_agent=request.META.get("HTTP_USER_AGENT"),
            )

    def process_got_request_exception(self, sender: type[Any], request: HttpRequest, **kwargs: Any) -> None:
        """Django's ``got_request_exception`` (the view raised): django-structlog logs
        ``request_failed`` and must write the rest of that request's lines itself."""
        super().process_got_request_exception(sender, request, **kwargs)
        setattr(request, _VIEW_RAISED, True)

    def handle_response(self, request: HttpRequest, response: HttpResponse) -> None:
        if not self.own_lines or getattr(request, _VIEW_RAISED, False) or response.streaming:
            return super().handle_response(request, response)
        level = self.levels_by_class.get(response.status_code // 100, self.default_level)
        if access_logger.is_enabled_for(level):
            access_logger.log(level, "request_finished", **access_fields(request, response))
        structlog.contextvars.clear_contextvars()


def connect() -> None:
    """Called once from the apps' ready(); the receivers are plain functions, so connecting twice is
    harmless (Django's signals keep one connection per receiver)."""
    signals.bind_extra_request_metadata.connect(mark_start, dispatch_uid="svc_common.observability.access_log.start")
    signals.bind_extra_request_finished_metadata.connect(
        describe_response, dispatch_uid="svc_common.observability.access_log.finish"
    )
