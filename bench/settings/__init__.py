"""Settings modules of bench's own, for the ``bare`` variant: each service's settings with the
observability middleware taken out, so the product's settings carry no switch for the benchmark."""

OBSERVABILITY_MIDDLEWARE_PREFIXES = (
    "svc_common.observability.request_metrics.",
    "svc_common.observability.access_log.",
)


def without_observability(middleware: list[str]) -> list[str]:
    return [name for name in middleware if not name.startswith(OBSERVABILITY_MIDDLEWARE_PREFIXES)]
