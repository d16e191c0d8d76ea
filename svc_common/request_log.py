"""One log line per request: django-structlog's ``request_finished``, carrying what an operator filters on.

django-structlog binds the request id (an incoming x-request-id, or a new one) for every line of the
request and writes ``request_started`` and ``request_finished``. The first is logged below INFO
(``DJANGO_STRUCTLOG_STATUS_START_LOG_LEVEL``) and so dropped before it costs anything; the second
becomes the request's access line through django-structlog's documented signals: method, path (no
query string), route, status, duration_ms, bytes, peer and pid, beside what every line has (time, level,
service, request_id, trace_id, span_id, and the user or order id once a view has bound it).
Gunicorn's own access log is off: it would be a second line per request.
"""

import functools
import os
import re
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django_structlog import signals

_STARTED_AT = "_svc_common_started_at"
_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


@functools.lru_cache(maxsize=256)
def route_of(pattern: str) -> str:
    """``^users/(?P<pk>[0-9]+)/?$`` (a route's regex) -> ``/users/{pk}``."""
    return "/" + _GROUP.sub(r"{\1}", pattern).removeprefix("^").removesuffix("$").removesuffix("/?").replace("\\", "")


def mark_start(request: HttpRequest, **_: Any) -> None:
    setattr(request, _STARTED_AT, time.perf_counter())


def describe_response(
    request: HttpRequest, response: HttpResponse | StreamingHttpResponse, log_kwargs: dict[str, Any], **_: Any
) -> None:
    started_at = getattr(request, _STARTED_AT, None)
    match = request.resolver_match
    log_kwargs.pop("request", None)  # "METHOD path?query": split into fields below, query left out
    log_kwargs.pop("code", None)
    log_kwargs.update(
        method=request.method,
        path=request.path,
        route=route_of(str(match.route)) if match is not None else None,
        status=response.status_code,
        duration_ms=round((time.perf_counter() - started_at) * 1000, 3) if started_at is not None else None,
        bytes=None if isinstance(response, StreamingHttpResponse) else len(response.content),
        peer=request.META.get("REMOTE_ADDR"),
        pid=os.getpid(),  # which gunicorn worker served it
    )


def connect() -> None:
    """Called once from the apps' ready(); the receivers are plain functions, so connecting twice is
    harmless (Django's signals keep one connection per receiver)."""
    signals.bind_extra_request_metadata.connect(mark_start, dispatch_uid="svc_common.request_log.start")
    signals.bind_extra_request_finished_metadata.connect(
        describe_response, dispatch_uid="svc_common.request_log.finish"
    )
