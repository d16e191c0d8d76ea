"""Metrics every service exports besides django-prometheus' own."""

from django.conf import settings
from prometheus_client import Gauge

BUILD_INFO = Gauge(
    "app_build_info",
    "Always 1; labels name the running service, its version and environment.",
    ["service", "version", "env"],
    multiprocess_mode="max",
)


def publish_build_info() -> None:
    BUILD_INFO.labels(settings.SERVICE_NAME, settings.SERVICE_VERSION, settings.DEPLOY_ENV).set(1)
