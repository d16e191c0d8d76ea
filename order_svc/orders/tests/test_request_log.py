"""AccessLogMiddleware writes what django-structlog's RequestMiddleware writes (testsupport.access_log_checks)."""

from testsupport.access_log_checks import *  # noqa: F403
