"""Fixtures for the container suite: the Docker daemon, the images built from Debian, the Compose stack.

The figures the suite measures (build times, image sizes, each fault's requests and answers) go to
the ``figures`` fixture (tests/conftest.py), printed in pytest's terminal summary.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import containers_support as cs


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory):
    daemon = cs.Daemon(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    daemon.ensure()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def images(docker_daemon, figures):
    """{compose variable: tag} for every image, built (or reused) by tools/local_images.py."""
    try:
        base, built = cs.local_images.build_all()
    except (RuntimeError, SystemExit) as exc:
        pytest.fail(str(exc))
    figures(f"base image {base.line()}")
    for b in built:
        figures(f"image {b.line()}")
    return {"BASE_IMAGE": base.tag, **cs.local_images.compose_env(built)}


@pytest.fixture(scope="session")
def stack(images):
    """docker-compose.yml up with user-svc x3 and order-svc x2; every container healthy."""
    stack = cs.Stack(images)
    try:
        stack.up()
        for service in (*cs.APP_SERVICES, cs.DATABASE_SERVICE, "nginx"):
            for container in stack.containers(service):
                cs.wait_healthy(container)
        yield stack
    finally:
        stack.down()
