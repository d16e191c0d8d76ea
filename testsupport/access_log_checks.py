"""svc_common.observability.access_log.AccessLogMiddleware against django-structlog's own RequestMiddleware:
the same requests through each service's whole middleware chain, once with each, give the same log
lines (event, level, fields), at INFO and with request_started on at DEBUG. Collected by each
service's suite: ``from testsupport.access_log_checks import *`` in a test module.

Only what differs by nature is left out of the comparison: the timestamp and the duration, and a
request id made up for a request that came without one (both must be version-4 UUIDs)."""

import logging
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import Client, override_settings
from django.urls import include, path

from svc_common.storage.repository import get_repository

OURS = "svc_common.observability.access_log.AccessLogMiddleware"
STOCK = "django_structlog.middlewares.RequestMiddleware"
ACCESS_LOGGER = "django_structlog.middlewares.request"
VARYING = {"timestamp", "duration_ms"}


def raising_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


def streaming_view(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"a", b"b"]), content_type="text/plain")


# The service's own routes, and two that no service has: a view that raises, a streamed response.
urlpatterns = [
    path("check/raises", raising_view),
    path("check/stream", streaming_view),
    path("", include(settings.ROOT_URLCONF)),
]


def requests_to_send() -> list[tuple[str, str, bytes, dict[str, str]]]:
    resource = "/" + settings.SERVICE_NAME.removesuffix("-svc") + "s"  # /users, /orders
    with_id = {"X-Request-ID": "compared-request", "User-Agent": "checks/1"}
    return [
        ("GET", f"{resource}/1", b"", with_id),  # 404 from the view
        ("GET", f"{resource}?page=1", b"", {}),  # 200, an id made up
        ("POST", resource, b"{not json", with_id),  # 400
        ("POST", resource, b"x" * (1024 * 1024 + 1), with_id),  # 413 before any view
        ("GET", "/healthz", b"", with_id),
        ("GET", "/nowhere", b"", with_id),  # 404 from the resolver: no route
        ("GET", "/check/raises", b"", with_id),  # 500: request_failed, django-structlog's own path
        ("GET", "/check/stream", b"", with_id),  # streamed: django-structlog's own path
    ]


def normalized(record: logging.LogRecord) -> dict[str, Any]:
    event = {key: value for key, value in record.msg.items() if key not in VARYING}  # type: ignore[union-attr]
    if event.get("request_id") != "compared-request":
        assert uuid.UUID(event["request_id"]).version == 4, event
        event["request_id"] = "<made up>"
    return {"levelno": record.levelno, **event}


def lines_with(middleware: str, caplog: pytest.LogCaptureFixture) -> list[tuple[int, list[dict[str, Any]]]]:
    chain = [middleware if entry == OURS else entry for entry in settings.MIDDLEWARE]
    assert middleware in chain
    seen = []
    get_repository.cache_clear()
    with override_settings(MIDDLEWARE=chain, ROOT_URLCONF=__name__):
        client = Client(raise_request_exception=False)
        for method, url, body, headers in requests_to_send():
            caplog.clear()
            response = client.generic(method, url, body, content_type="application/json", headers=headers)
            if response.streaming:
                b"".join(response.streaming_content)  # type: ignore[arg-type]
            seen.append((response.status_code, [normalized(r) for r in caplog.records if r.name == ACCESS_LOGGER]))
    return seen


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["INFO", "DEBUG"])
def test_access_log_middleware_writes_what_django_structlogs_middleware_writes(caplog, level):
    caplog.set_level(level)
    stock, ours = lines_with(STOCK, caplog), lines_with(OURS, caplog)
    assert ours == stock
    statuses = [status for status, _ in ours]
    assert statuses == [404, 200, 400, 413, 200, 404, 500, 200]
    events = [[line["event"] for line in lines] for _, lines in ours]
    started = ["request_started"] if level == logging.DEBUG else []
    assert events[0] == [*started, "request_finished"]
    assert events[6] == [*started, "request_failed"]
    finished = next(line for line in ours[0][1] if line["event"] == "request_finished")
    assert {key: finished[key] for key in ("method", "path", "status", "request_id")} == {
        "method": "GET",
        "path": requests_to_send()[0][1],
        "status": 404,
        "request_id": "compared-request",
    }
