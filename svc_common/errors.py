"""Every error a client can cause becomes a 4xx JSON body; nothing reaches the client as an HTML 500."""

import structlog
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.views import exception_handler

from svc_common.repository import RepositoryUnavailable

logger = structlog.get_logger(__name__)


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource conflicts with one that already exists."
    default_code = "conflict"


class UnprocessableContent(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "The request cannot be processed as sent."
    default_code = "unprocessable"


class DependencyUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A service this request depends on is unavailable; try again later."
    default_code = "dependency_unavailable"


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "payload_too_large"


def json_exception_handler(exc, context):
    """DRF's handler, plus JSON answers for the Django errors DRF leaves alone."""
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, RepositoryUnavailable):
        logger.warning("storage_unavailable", error=str(exc))
        exc = DependencyUnavailable("Storage is unavailable; try again later.")
    response = exception_handler(exc, context)
    if response is None:
        # An unexpected bug: log it with its stack and answer JSON rather than Django's HTML page.
        logger.exception("unhandled_exception", exc_type=type(exc).__name__)
        return None
    if isinstance(response.data, list):
        response.data = {"detail": response.data}
    return response


def not_found(request, exception=None):
    return JsonResponse({"detail": "Not found."}, status=404)


def server_error(request):
    return JsonResponse({"detail": "Internal server error."}, status=500)


def bad_request(request, exception=None):
    return JsonResponse({"detail": "Bad request."}, status=400)
