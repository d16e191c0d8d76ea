"""Liveness and readiness probes, and the URL patterns every service serves besides its API."""

import structlog
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from svc_common.observability.metrics_endpoint import metrics_view
from svc_common.storage.repository import RepositoryUnavailable, get_repository

logger = structlog.get_logger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Never depends on anything downstream."""
    return JsonResponse({"status": "ok"})


def no_favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask every page's host for one; an empty answer keeps a 404 warning out of the logs."""
    return HttpResponse(status=204)


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: this service's own storage answers. Downstream services are deliberately not checked,
    so an outage of one service does not take its callers out of the load balancer too."""
    try:
        get_repository().ping()
    except RepositoryUnavailable as exc:
        # The cause (with the storage address) goes to the log, not to whoever probes us.
        logger.warning("readiness_failed", error=str(exc))
        return JsonResponse({"status": "unavailable", "detail": "Storage is unavailable."}, status=503)
    return JsonResponse({"status": "ok"})


def platform_urlpatterns() -> list[URLPattern]:
    """Each with or without a trailing slash, like the API routes: nothing is ever redirected."""
    return [
        re_path(r"^healthz/?$", healthz, name="healthz"),
        re_path(r"^readyz/?$", readyz, name="readyz"),
        re_path(r"^schema/?$", SpectacularAPIView.as_view(), name="schema"),
        re_path(r"^docs/?$", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
        # django-prometheus' route name, which is also this view's "view" label.
        re_path(r"^metrics/?$", metrics_view, name="prometheus-django-metrics"),
        re_path(r"^favicon\.ico$", no_favicon, name="favicon"),
    ]
