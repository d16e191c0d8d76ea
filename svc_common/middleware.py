"""Request guards that must run before any view reads the body."""

import io
from collections.abc import Callable

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse, JsonResponse


def _too_large(length: int | str, limit: int) -> JsonResponse:
    return JsonResponse({"detail": f"Request body is {length} bytes; the limit is {limit} bytes."}, status=413)


class BodySizeLimitMiddleware:
    """Answer 413 for a body over the limit: a declared one before a byte is read, a chunked one
    as soon as it passes the limit (Django alone would silently see a chunked body as empty)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.limit = settings.MAX_REQUEST_BODY_BYTES

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared:
            try:
                length = int(declared)
            except ValueError:
                return JsonResponse({"detail": "Content-Length header is not an integer."}, status=400)
            if length > self.limit:
                return _too_large(length, self.limit)
        elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = request.META["wsgi.input"].read(self.limit + 1)
            if len(body) > self.limit:
                return _too_large(f"more than {self.limit}", self.limit)
            request._stream = LimitedStream(io.BytesIO(body), len(body))  # type: ignore[assignment]
            request.META["CONTENT_LENGTH"] = str(len(body))
        return self.get_response(request)
