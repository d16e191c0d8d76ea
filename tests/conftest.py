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


# --- running side by side (pytest-xdist) ----------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """How the tests are shared out between pytest-xdist workers: a module at a time (its
    module-scoped servers start once), except that every container test goes to one worker. Those
    share one Docker daemon, its images and one Compose stack (session fixtures), and each fault
    test needs that stack to itself. (``--dist loadgroup`` would do this with a mark, but with
    pytest 9.2 it silently stops grouping: pytest-xdist issue 1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ContainerTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "containers" if nodeid.startswith("tests/containers/") else super()._split_scope(nodeid)

    return ContainerTestsTogether(config, log)


# Measured figures (build times, image sizes, each fault's requests and answers), printed in the
# terminal summary. Under pytest-xdist a worker hands its figures to the controller, which prints them.
FIGURES: list[str] = []


@pytest.fixture(scope="session")
def figures():
    """figures(line): a measured figure for the terminal summary."""
    return FIGURES.append


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["figures"] = list(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FIGURES.extend(getattr(node, "workeroutput", {}).get("figures", []))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
