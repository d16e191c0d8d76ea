"""The order service without metrics and request-logging middleware (bench's ``bare`` variant)."""

from bench.settings import without_observability
from order_service.settings import *  # noqa: F403
from order_service.settings import MIDDLEWARE

MIDDLEWARE = without_observability(MIDDLEWARE)
