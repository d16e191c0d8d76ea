"""svc_common.observability.log_config's configuration: structlog's own events go through the standard library
to the same handler as its own records, whole, with the standard library's levels and filters applied
and seen by pytest's caplog."""

import datetime as dt
import io
import json
import logging
import logging.config

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from svc_common.observability.log_config import UTCTimestamper, build_logging_config, utc_timestamp
from svc_common.observability.log_writer import DroppingQueueHandler


@pytest.fixture
def configured():
    """LOGGING applied as Django would, the handler's stream swapped for a buffer; undone afterwards."""
    saved_handlers, saved_level = logging.root.handlers[:], logging.root.level
    logging.config.dictConfig(build_logging_config("INFO"))
    (handler,) = logging.root.handlers
    assert isinstance(handler, DroppingQueueHandler)
    handler.stream = io.StringIO()  # before the first line starts the writer on it
    yield handler
    handler.close()
    logging.root.handlers[:] = saved_handlers
    logging.root.setLevel(saved_level)
    structlog.reset_defaults()


def lines_of(handler):
    handler.close()  # writes what is queued
    return [json.loads(line) for line in handler.stream.getvalue().splitlines()]


def test_structlog_and_stdlib_lines_share_the_handler_and_the_shape(configured):
    structlog.get_logger("svc.test").info("structlog_event", n=1, to="ada@example.com")
    structlog.get_logger("svc.test").debug("below_the_level")
    logging.getLogger("svc.stdlib").warning("stdlib %s", "event")
    first, second = lines_of(configured)
    assert {k: first[k] for k in ("event", "level", "logger", "n", "to")} == {
        "event": "structlog_event",
        "level": "info",
        "logger": "svc.test",
        "n": 1,
        "to": "<email>",
    }
    assert (second["event"], second["level"], second["logger"]) == ("stdlib event", "warning", "svc.stdlib")
    assert "timestamp" in first and "timestamp" in second


def test_an_exception_is_rendered_into_the_line(configured):
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("svc.test").exception("failed")
    (line,) = lines_of(configured)
    assert line["level"] == "error" and "ValueError: boom" in line["exception"]


def test_structlog_events_obey_the_standard_librarys_levels_and_filters(configured):
    logging.getLogger("svc.quiet").setLevel(logging.WARNING)
    logging.getLogger("svc.chatty").setLevel(logging.DEBUG)  # below the root's INFO

    class NoSecrets(logging.Filter):
        def filter(self, record):
            return "secret" not in str(record.msg)

    logging.getLogger("svc.filtered").addFilter(NoSecrets())
    structlog.get_logger("svc.quiet").info("not_written")
    structlog.get_logger("svc.quiet").warning("written_quiet")
    structlog.get_logger("svc.chatty").debug("written_debug")
    structlog.get_logger("svc.filtered").info("a_secret")
    structlog.get_logger("svc.filtered").info("written_filtered")
    assert [line["event"] for line in lines_of(configured)] == ["written_quiet", "written_debug", "written_filtered"]
    for name in ("svc.quiet", "svc.chatty", "svc.filtered"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("svc.filtered").filters.clear()


def test_caplog_sees_structlog_events(configured, caplog):
    structlog.contextvars.bind_contextvars(request_id="seen-by-caplog")
    try:
        structlog.get_logger("svc.test").warning("order_created", order_id=3)
    finally:
        structlog.contextvars.clear_contextvars()
    (record,) = [r for r in caplog.records if r.name == "svc.test"]
    assert record.levelno == logging.WARNING
    assert {k: record.msg[k] for k in ("event", "order_id", "request_id")} == {
        "event": "order_created",
        "order_id": 3,
        "request_id": "seen-by-caplog",
    }


def test_the_line_has_the_same_fields_as_before(configured):
    """One JSON object per event with the fields the services always wrote."""
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        structlog.get_logger("svc.test").info("order_created", order_id=3)
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines_of(configured)
    assert set(line) == {"event", "level", "logger", "timestamp", "service", "request_id", "order_id"}


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="Unknown level"):
        build_logging_config("LOUD")


@settings(max_examples=2000, deadline=None)  # no timed assertion: a loaded CI machine is no failure
@given(st.lists(st.integers(min_value=0, max_value=253_402_300_799_999_999), min_size=1, max_size=5))
def test_timestamps_read_as_structlog_writes_them(instants):
    """UTCTimestamper formats what TimeStamper(fmt="iso", utc=True) does, for any microsecond up to
    the year 9999, whichever second it formatted before (instants in any order)."""
    stamper = UTCTimestamper()
    for microseconds in instants:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=microseconds)
        assert stamper.format(microseconds) == moment.isoformat().replace("+00:00", "Z")


def test_every_line_is_stamped_with_the_time_it_was_written():
    before = dt.datetime.now(dt.UTC)
    stamped = utc_timestamp(None, "info", {})["timestamp"]
    after = dt.datetime.now(dt.UTC)
    assert before - dt.timedelta(milliseconds=1) <= dt.datetime.fromisoformat(stamped) <= after
