"""Loaded by each service's pytest.ini (``-p``) before Django's settings are imported."""

import os

import pytest

# Tests run with debug off, as in production, so settings demand a key; this one guards nothing.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-a-secret")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port, for one test module (a missing binary fails)."""
    from testsupport.redis_server import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
