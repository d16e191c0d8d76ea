"""Every error a client can cause becomes a 4xx JSON body; nothing reaches the client as an HTML 500.

Services raise plain domain exceptions and know nothing of HTTP. This module is the one place they are
translated: ``settings.DOMAIN_ERRORS`` maps each exception class (a dotted path) to its status and the
detail the client reads, so a new domain error is one line in its service's settings.
"""

import functools
import re
from typing import Any

import structlog
from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.utils.module_loading import import_string
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler

from svc_common.domain_errors import FieldError

logger = structlog.get_logger(__name__)


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "payload_too_large"


@functools.cache
def domain_errors() -> tuple[tuple[type[Exception], int, str | None], ...]:
    """``settings.DOMAIN_ERRORS`` imported: (exception class, status, client detail or None)."""
    return tuple((import_string(path), code, detail) for path, (code, detail) in settings.DOMAIN_ERRORS.items())


def _event_name(exc: Exception) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def domain_error_response(exc: Exception) -> Response | None:
    """The JSON answer for a domain exception named in ``settings.DOMAIN_ERRORS``, or None."""
    for exception_class, code, detail in domain_errors():
        if isinstance(exc, exception_class):
            message = detail if detail is not None else str(exc)
            if code >= 500:
                # The cause (addresses, the downstream answer) goes to the log; the client gets ``detail``.
                logger.warning(_event_name(exc), error=str(exc))
            body: dict[str, Any] = {exc.field: [message]} if isinstance(exc, FieldError) else {"detail": message}
            return Response(body, status=code)
    return None


def json_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the domain errors and the Django errors DRF leaves alone."""
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    response = domain_error_response(exc)
    if response is not None:
        return response
    response = exception_handler(exc, context)
    if response is None:
        # An unexpected bug: log it with its stack and answer JSON rather than Django's HTML page.
        logger.exception("unhandled_exception", exc_type=type(exc).__name__)
        return None
    if isinstance(response.data, list):
        response.data = {"detail": response.data}
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"detail": "Not found."}, status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "Internal server error."}, status=500)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, DisallowedHost):
        detail = "The Host header names no host this service answers to (ALLOWED_HOSTS)."
        return JsonResponse({"detail": detail}, status=400)
    return JsonResponse({"detail": "Bad request."}, status=400)
