"""Loaded by each service's pytest.ini (``-p``) before Django's settings are imported."""

import logging
import os

import pytest

# Tests run with debug off, as in production, so settings demand a key; this one guards nothing.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-a-secret")


@pytest.fixture(autouse=True)
def log_lines_written_within_their_test():
    """The services write log lines from a background thread: let each test's lines reach the output
    pytest captures for that test, instead of surfacing later in the run's report."""
    yield
    from svc_common.observability.log_writer import DroppingQueueHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, DroppingQueueHandler):
            handler.close()  # writes what is queued; the next line starts the writer again
