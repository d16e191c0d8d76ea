"""The user service without metrics and request-logging middleware (bench's ``bare`` variant)."""

from bench.settings import without_observability
from user_service.settings import *  # noqa: F403
from user_service.settings import MIDDLEWARE

MIDDLEWARE = without_observability(MIDDLEWARE)
