"""svc_common's platform checks, under this service's settings."""

from testsupport.platform_checks import *  # noqa: F403
