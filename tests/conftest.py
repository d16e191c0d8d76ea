"""Fixtures that start the real services as gunicorn processes on free loopback ports."""

from contextlib import ExitStack

import pytest

# The helpers' asserts explain their failures as the tests' own do (must precede importing testsupport).
pytest.register_assert_rewrite("testsupport")

from testsupport.services import start_service  # noqa: E402


@pytest.fixture(scope="module")
def postgres_server():
    """A real PostgreSQL server on a free loopback port for one test module (a missing server fails);
    tests take a database each (``testsupport.postgres_server.service_database``)."""
    from testsupport.postgres_server import start_postgres

    server = start_postgres()
    yield server
    server.cleanup()


@pytest.fixture
def start(tmp_path):
    """Start a service with extra environment; every service started is stopped at teardown."""
    with ExitStack() as started:  # stops every service at teardown, the last started first

        def _start(name, **env):
            service = start_service(name, tmp_path, env={k: str(v) for k, v in env.items()})
            started.callback(service.stop)
            return service

        yield _start


@pytest.fixture
def user_service(start):
    return start("user-svc")


@pytest.fixture
def order_service(start, user_service):
    return start("order-svc", USER_SVC_URL=user_service.url)


class RunningPair:
    def __init__(self, user, order):
        self.user, self.order = user, order
        self.user_url, self.order_url = user.url, order.url


@pytest.fixture(scope="session")
def running_services(tmp_path_factory):
    """Both services, started once for the session, for tests that only add data and observe."""
    log_dir = tmp_path_factory.mktemp("running-services")
    user = start_service("user-svc", log_dir)
    order = start_service("order-svc", log_dir, env={"USER_SVC_URL": user.url})
    yield RunningPair(user, order)
    order.stop()
    user.stop()
