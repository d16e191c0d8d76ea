"""One JSON object per log line, for Django, gunicorn, tenacity and our own code alike."""

import structlog
from opentelemetry import trace


def add_service(_logger, _method, event_dict):
    """Name the emitting service and version on every line, read lazily from Django settings."""
    from django.conf import settings

    event_dict.setdefault("service", getattr(settings, "SERVICE_NAME", "unknown"))
    return event_dict


def add_trace_ids(_logger, _method, event_dict):
    """Correlate a line with the active OpenTelemetry span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict



SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    add_service,
    add_trace_ids,
]


def build_logging_config(level: str) -> dict:
    """Configure structlog and return the stdlib ``LOGGING`` dict that renders every record as JSON."""
    structlog.configure(
        processors=[
            *SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
                "foreign_pre_chain": SHARED_PROCESSORS,
            }
        },
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"}
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # Django's own request logger repeats what django-structlog already logs per request.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
        },
    }
