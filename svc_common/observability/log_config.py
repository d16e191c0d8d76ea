"""One JSON object per log line, for Django, gunicorn, tenacity and our own code alike."""

import datetime
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

EventDict = MutableMapping[str, Any]


def add_service(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Name the emitting service on every line, read lazily from Django settings."""
    event_dict.setdefault("service", service_name())
    return event_dict


# The name for lines written before Django's settings are loaded: gunicorn's master never loads them
# (svc_common.server.gunicorn_logging sets this from the served project's package).
default_service_name = "unknown"


_settings_service_name: str | None = None


def service_name() -> str:
    global _settings_service_name
    if _settings_service_name is not None:
        return _settings_service_name
    # Never imports Django, nor loads its settings: not in gunicorn's master (see above).
    conf = sys.modules.get("django.conf")
    if conf is None or not conf.settings.configured:
        return default_service_name
    try:
        _settings_service_name = str(getattr(conf.settings, "SERVICE_NAME", default_service_name))
    except Exception:  # settings that fail to load: the line must still be written
        return default_service_name
    return _settings_service_name


class UTCTimestamper:
    """structlog's ``TimeStamper(fmt="iso", utc=True, key="timestamp")``: the same text
    (``2026-11-28T10:20:58.489503Z``, without the fraction when it is zero, as ``isoformat`` writes it),
    with the date and time of day formatted once a second rather than for every line, which took
    about 2 % of a GET's instructions (callgrind)."""

    def __init__(self) -> None:
        self.second: tuple[int, str] = (-1, "")  # one attribute, swapped whole: threads may share it

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.format(time.time_ns() // 1000)
        return event_dict

    def format(self, microseconds: int) -> str:
        """``microseconds`` since the epoch, as ISO 8601 in UTC with a Z."""
        second, fraction = divmod(microseconds, 1_000_000)
        known, text = self.second
        if second != known:
            text = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self.second = (second, text)
        return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


utc_timestamp = UTCTimestamper()


def add_trace_ids(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Correlate a line with the active OpenTelemetry span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


# user@example.com, and its percent-encoded form in a query string (user%40example.com).
EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+",
    re.IGNORECASE,
)
EMAIL_MASK = "<email>"
_JSON_SCALARS = (bool, int, float, type(None))


def _mask_text(text: str) -> str:
    # The regex costs microseconds per string even where it finds nothing; most values have no "@".
    return EMAIL.sub(EMAIL_MASK, text) if "@" in text or "%40" in text else text


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask(item) for item in value]
    return _mask_text(repr(value))  # what JSONRenderer would write for it, masked


def mask_emails(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Safety net: no email address reaches a log line, whatever a caller put in an event's values
    (the event text, a request path or query, an exception's message, an object's repr)."""
    return {key: _mask(value) for key, value in event_dict.items()}


def _dumps(value: Any, default: Any = None, **_: Any) -> str:
    """orjson renders a line several times faster than the json module. It writes non-ASCII text as
    it is, and some of it (U+2028, U+0085) ends a line for readers that split on every line break:
    such a rare line is rendered again with everything beyond ASCII escaped, as the json module does."""
    text = orjson.dumps(value, default=default).decode()
    return text if text.isascii() else json.dumps(value, default=default, separators=(",", ":"))


SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    utc_timestamp,
    add_service,
    add_trace_ids,
]


class MaskedJSONRenderer:
    """JSON lines with ``mask_emails`` applied: rendered as they are, and rendered again masked only
    when the line has an "@" or "%40" in it at all. Walking every value of every line to find an
    address that is almost never there cost about a tenth of writing a line (profiled)."""

    def __init__(self) -> None:
        self.render = structlog.processors.JSONRenderer(serializer=_dumps)

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> str:
        line = self.render(logger, method, event_dict)
        if "@" in line or "%40" in line:
            line = self.render(logger, method, mask_emails(logger, method, event_dict))
        return str(line)


# The root handler's ProcessorFormatter runs these last, on every record (structlog's own events and
# the standard library's records alike).
RENDER_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    structlog.processors.format_exc_info,
    MaskedJSONRenderer(),
]


def json_formatter(extra_pre_chain: Iterable[structlog.typing.Processor] = ()) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of the handler that writes our log lines, in Django's LOGGING and gunicorn's
    logconfig_dict alike (svc_common.server.gunicorn_logging)."""
    return structlog.stdlib.ProcessorFormatter(
        processors=RENDER_PROCESSORS, foreign_pre_chain=[*SHARED_PROCESSORS, *extra_pre_chain]
    )


def build_logging_config(level: str) -> dict[str, Any]:
    """Configure structlog and return the stdlib ``LOGGING`` dict that renders every record as JSON."""
    numeric_level = logging.getLevelName(level)
    if not isinstance(numeric_level, int):
        raise ValueError(f"Unknown level: {level!r}")
    structlog.configure(
        # structlog's documented standard-library path: the event goes to the logging module as a
        # record, so per-logger levels, filters, every handler (pytest's caplog too) see it, and the
        # root handler's ProcessorFormatter renders it like any other record.
        processors=[
            # First: the standard library's level, per logger, decides before anything is built.
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    # Python's warnings go through logging (so they are JSON too) instead of straight to stderr.
    logging.captureWarnings(True)
    # No line carries its caller's file and line, so the logging module need not walk the stack to
    # find them for every record: the logging HOWTO's "Optimization" section documents setting
    # logging._srcfile to None for this (the one way it offers; there is no public setter).
    logging._srcfile = None
    # Nor the thread, process and task names they would look up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": json_formatter}},
        # Request threads render their line and queue it; one thread writes (observability.log_writer).
        # A factory ("()"), not "class": from Python 3.12 dictConfig wants a QueueHandler "class" to
        # name handlers of its own for a listener it makes, and that listener's thread is a
        # greenlet under gevent.
        "handlers": {
            "stdout": {
                "()": "svc_common.observability.log_writer.DroppingQueueHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # Django's own request logger repeats what django-structlog already logs per request.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
        },
    }
