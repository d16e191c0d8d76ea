"""Request guards that run before any view: the Host header, and the body's size before it is read."""

import io
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

# Distinct Host headers remembered as allowed; past that, each is checked every time.
REMEMBERED_HOSTS = 64


class CommonMiddleware:
    """What Django's CommonMiddleware does for this API: the Host header is checked against
    ALLOWED_HOSTS before a view runs (a 400 from handler400 otherwise), and a response of known length
    carries Content-Length.

    Django's class also redirects (APPEND_SLASH, PREPEND_WWW) and refuses DISALLOWED_USER_AGENTS; this
    API does neither (its routes take /users/7 and /users/7/ alike), so those settings are refused at
    startup rather than ignored. Counted, Django's class was 7 % of a GET's instructions, most of it
    ``request.get_host()`` parsing and checking the same Host as on the previous request, and settings
    read through LazySettings. A Host that passed is remembered here, so it is checked once. Public
    names only; testsupport/platform_checks.py compares it with Django's class on a sequence of hosts,
    under several ALLOWED_HOSTS and USE_X_FORWARDED_HOST, and on answers with and without a length."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        redirecting = ("APPEND_SLASH", "PREPEND_WWW", "DISALLOWED_USER_AGENTS")
        unsupported = [name for name in redirecting if getattr(settings, name)]
        if unsupported:
            raise ImproperlyConfigured(
                f"{', '.join(unsupported)} need django.middleware.common.CommonMiddleware in MIDDLEWARE"
                f" instead of {__name__}.CommonMiddleware"
            )
        self.get_response = get_response
        # Behind USE_X_FORWARDED_HOST the host checked may come from another header: nothing is remembered.
        self.remember = not settings.USE_X_FORWARDED_HOST
        self.allowed_hosts: set[str] = set()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        host = request.META.get("HTTP_HOST")
        if host is None or host not in self.allowed_hosts:
            request.get_host()  # DisallowedHost: Django answers 400
            if self.remember and host is not None and len(self.allowed_hosts) < REMEMBERED_HOSTS:
                self.allowed_hosts.add(host)
        response = self.get_response(request)
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
        return response


# Set in the WSGI environ (and so in request.META) by ChunkedRequestBody for a chunked body over the limit.
CHUNKED_BODY_OVER_LIMIT = "svc_common.chunked_body_over_limit"


class ChunkedRequestBody:
    """WSGI middleware around Django's application: a request body sent chunked (no Content-Length) is
    read here, up to the limit, and handed on as if its length had been declared.

    Django reads exactly CONTENT_LENGTH bytes of ``wsgi.input`` and none without it, so a chunked body
    would silently look empty (gunicorn decodes the chunks, but declares no length). What this hands on
    is what a client declaring the length would have sent: ``wsgi.input`` holding the body and
    ``CONTENT_LENGTH`` its size (PEP 3333's keys only). A body over the limit is not kept: the environ
    says so (CHUNKED_BODY_OVER_LIMIT) and BodySizeLimitMiddleware answers 413 inside Django, where the
    answer is logged and counted like any other."""

    def __init__(self, application: Callable[..., Iterable[bytes]]) -> None:
        self.application = application

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            limit = settings.MAX_REQUEST_BODY_BYTES
            body = environ["wsgi.input"].read(limit + 1)
            if len(body) > limit:
                environ[CHUNKED_BODY_OVER_LIMIT] = True
                body = b""
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)


def _too_large(length: int | str, limit: int) -> JsonResponse:
    return JsonResponse({"detail": f"Request body is {length} bytes; the limit is {limit} bytes."}, status=413)


class BodySizeLimitMiddleware:
    """Answer 413 for a body over the limit: a declared one before a byte is read, a chunked one as
    ChunkedRequestBody found it. A chunked body that reached Django unread (the application not wrapped
    in ChunkedRequestBody) is refused with 411 rather than seen as empty."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.limit = settings.MAX_REQUEST_BODY_BYTES

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.META.get(CHUNKED_BODY_OVER_LIMIT):
            return _too_large(f"more than {self.limit}", self.limit)
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared:
            try:
                length = int(declared)
            except ValueError:
                return JsonResponse({"detail": "Content-Length header is not an integer."}, status=400)
            if length > self.limit:
                return _too_large(length, self.limit)
        elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            return JsonResponse({"detail": "A chunked body is not accepted here; send Content-Length."}, status=411)
        return self.get_response(request)
