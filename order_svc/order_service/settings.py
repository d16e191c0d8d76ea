"""Order service settings: the shared base, what names this service, and how it calls the user service."""

from django.core.exceptions import ImproperlyConfigured

from order_service import SERVICE_NAME  # the one place it is written (see order_service/__init__.py)
from svc_common.env import env_float, env_int, env_str
from svc_common.settings_base import *
from svc_common.settings_base import DOMAIN_ERRORS, INSTALLED_APPS, SPECTACULAR_SETTINGS, databases, repository_class

ROOT_URLCONF = "order_service.urls"
WSGI_APPLICATION = "order_service.wsgi.application"
INSTALLED_APPS = [*INSTALLED_APPS, "orders"]

REPOSITORY_CLASS = repository_class(
    {
        "memory": "orders.repositories.InMemoryOrderRepository",
        "postgres": "orders.postgres_repository.PostgresOrderRepository",
    }
)
DOMAIN_ERRORS = {
    **DOMAIN_ERRORS,
    "orders.services.UserNotFound": (404, None),
    "orders.services.TotalMismatch": (400, None),
    "orders.user_client.UserServiceUnavailable": (503, "The user service is unavailable; the order was not stored."),
}

DATABASES = databases(SERVICE_NAME)

USER_SVC_URL = env_str("USER_SVC_URL", "http://127.0.0.1:8001").rstrip("/")
if not USER_SVC_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"USER_SVC_URL={USER_SVC_URL!r} must be an http(s) URL")
USER_SVC_CONNECT_TIMEOUT = env_float("USER_SVC_CONNECT_TIMEOUT", 0.5, minimum=0.001)
USER_SVC_READ_TIMEOUT = env_float("USER_SVC_READ_TIMEOUT", 1.0, minimum=0.001)
USER_SVC_ATTEMPTS = env_int("USER_SVC_ATTEMPTS", 3, minimum=1)
USER_SVC_DEADLINE = env_float("USER_SVC_DEADLINE", 3.0, minimum=0.01)
# A gevent worker calls the user service for as many requests at once as it serves; past the pool,
# a call waits for a free connection (at most the connect timeout: orders.user_client).
USER_SVC_POOL_SIZE = env_int("USER_SVC_POOL_SIZE", 100, minimum=1)

SPECTACULAR_SETTINGS = {**SPECTACULAR_SETTINGS, "TITLE": "Order service API"}
