"""Settings both services share, read from the environment in one place.

A service's settings module does ``from svc_common.settings_base import *`` and then names itself
(``SERVICE_NAME``), its URLconf and its apps.
"""

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from svc_common.env import env_bool, env_float, env_int, env_list, env_str
from svc_common.observability.log_config import build_logging_config

DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off (./manage_all.sh start supplies one for local runs)"
        )
    SECRET_KEY = "insecure-debug-only-key"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

# Behind a proxy, links the API writes (pagination's next/previous) name the scheme, host and port the
# client used. The Host header carries host and port through nginx (deploy/nginx/nginx.conf forwards it
# as sent) and through Envoy (which keeps it); the scheme arrives in X-Forwarded-Proto, which only a
# proxy that overwrites a client's own value may be trusted for: nginx here, and on Kubernetes the
# sidecar, which every inbound request passes (Envoy sets the header from the downstream connection, or
# keeps a trusted hop's, the ingress gateway's). Off by default: a service reached directly must not
# believe a client's header. USE_X_FORWARDED_HOST/PORT are for a proxy that rewrites Host instead.
if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("DJANGO_USE_X_FORWARDED_HOST", False)
USE_X_FORWARDED_PORT = env_bool("DJANGO_USE_X_FORWARDED_PORT", False)

SERVICE_VERSION = env_str("SERVICE_VERSION", "0.1.0")
DEPLOY_ENV = env_str("DEPLOY_ENV", "local")
if DEBUG and DEPLOY_ENV != "local":
    # Debug pages show settings and stack frames to any client: only ever on a developer's machine.
    raise ImproperlyConfigured(f"DJANGO_DEBUG=true is refused with DEPLOY_ENV={DEPLOY_ENV!r}; only 'local' allows it")

# Domain exceptions and their HTTP answers: dotted path -> (status, the client's detail, or None for
# the exception's own text). svc_common.api.exception_handler translates them, in one place; a service adds its own.
DOMAIN_ERRORS: dict[str, tuple[int, str | None]] = {
    "svc_common.storage.repository.RepositoryUnavailable": (503, "Storage is unavailable; try again later."),
    "svc_common.storage.idempotency.IdempotencyKeyReused": (422, None),
}

REPOSITORY_BACKEND = env_str("REPOSITORY_BACKEND", "memory").strip().lower()


def repository_class(backends: dict[str, str]) -> str:
    """The dotted path of the repository class ``REPOSITORY_BACKEND`` names, among a service's own
    ``backends`` (name -> class path); ``svc_common.storage.repository.get_repository`` imports it."""
    if REPOSITORY_BACKEND not in backends:
        choices = " or ".join(repr(name) for name in backends)
        raise ImproperlyConfigured(f"REPOSITORY_BACKEND={REPOSITORY_BACKEND!r}: use {choices}")
    return backends[REPOSITORY_BACKEND]


# REPOSITORY_BACKEND=postgres: one database per service, named by a libpq URL (svc_common.storage.database).
DATABASE_URL = env_str("DATABASE_URL")
DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 2, minimum=1)
DATABASE_STATEMENT_TIMEOUT = env_float("DATABASE_STATEMENT_TIMEOUT", 2.0, minimum=0.01)
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 8, minimum=1)
DATABASE_POOL_TIMEOUT = env_float("DATABASE_POOL_TIMEOUT", 2.0, minimum=0.01)


def databases(application_name: str) -> dict[str, dict[str, Any]]:
    """``DATABASES`` for a service: none on the in-memory backend, ``DATABASE_URL`` on postgres."""
    if REPOSITORY_BACKEND != "postgres":
        return {}
    if not DATABASE_URL:
        raise ImproperlyConfigured(
            "REPOSITORY_BACKEND=postgres needs DATABASE_URL (a libpq URL of this service's database)"
        )
    from svc_common.storage.database import database_settings

    entry = database_settings(
        DATABASE_URL,
        connect_timeout=DATABASE_CONNECT_TIMEOUT,
        statement_timeout=DATABASE_STATEMENT_TIMEOUT,
        pool_size=DATABASE_POOL_SIZE,
        pool_timeout=DATABASE_POOL_TIMEOUT,
        application_name=application_name,
    )
    return {"default": entry}


# A JSON API with a browsable front end: no sessions, no auth models; the only tables are the
# services' own (REPOSITORY_BACKEND=postgres).
INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
]

MIDDLEWARE = [
    # The request metrics the dashboards and alerts read (svc_common.observability.request_metrics):
    # requests and responses counted around everything below, as django-prometheus'
    # PrometheusBeforeMiddleware would be placed ...
    "svc_common.observability.request_metrics.RequestMetricsMiddleware",
    # Ahead of anything that may answer by itself (400 for a bad Host, 413, static files), so every
    # request is logged with a request_id (svc_common.observability.access_log: one line per request).
    "svc_common.observability.access_log.AccessLogMiddleware",
    # ALLOWED_HOSTS and Content-Length, as Django's CommonMiddleware, without its redirects. Before the
    # OpenTelemetry middleware, which DjangoInstrumentor inserts right after this one and which would
    # otherwise meet a bad Host first (svc_common.observability.tracing).
    "svc_common.api.request_guards.CommonMiddleware",
    "svc_common.api.request_guards.BodySizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # ... and the latency by view timed from the last middleware on, where django-prometheus'
    # PrometheusAfterMiddleware times it.
    "svc_common.observability.request_metrics.ViewLatencyMiddleware",
]

DATABASES: dict[str, dict[str, Any]] = {}  # each service's settings: databases(SERVICE_NAME)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Routes accept both /users/7 and /users/7/ themselves, so nothing is ever redirected (a redirected
# POST loses its body).
APPEND_SLASH = False

# Bodies above 1 MiB are refused with 413 before they are read.
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

STATIC_URL = "/static/"
STATIC_ROOT = None
# Serve DRF's and Swagger UI's assets straight from the installed packages: no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    # Who may call is the mesh's decision (istio/: mTLS and AuthorizationPolicy): no permission
    # classes, which DRF treats as AllowAny without building one per request.
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_PARSER_CLASSES": ["svc_common.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "svc_common.api.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "svc_common.api.negotiation.JSONFirstContentNegotiation",
    "DEFAULT_PAGINATION_CLASS": "svc_common.api.pagination.RepositoryPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "svc_common.api.exception_handler.json_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "VERSION": SERVICE_VERSION,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["svc_common.api.schema.canonical_paths"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "svc_common.api.schema.add_protocol_errors",
    ],
}

# django-prometheus' default buckets start at 10 ms, where every in-memory request lands.
PROMETHEUS_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)
PROMETHEUS_METRIC_NAMESPACE = ""

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = build_logging_config(LOG_LEVEL)
DJANGO_STRUCTLOG_IP_LOGGING_ENABLED = False
DJANGO_STRUCTLOG_USER_ID_FIELD = None
# An incoming x-request-id (from Envoy, or the calling service) is the request's id; django-structlog
# would otherwise make up a new one.
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = True
# One line per request: request_finished is the access line (svc_common.observability.access_log); request_started
# is logged below INFO, so it is dropped before it is rendered.
DJANGO_STRUCTLOG_STATUS_START_LOG_LEVEL = logging.DEBUG
