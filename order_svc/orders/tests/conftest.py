import pytest
from rest_framework.test import APIClient

from orders.user_client import get_user_client
from svc_common.storage.repository import get_repository
from testsupport.scripted_server import ScriptedServer, respond


@pytest.fixture(autouse=True)
def fresh_state():
    """Each test starts with an empty store and a user client built from the current settings."""
    get_repository.cache_clear()
    get_user_client.cache_clear()
    yield
    get_repository.cache_clear()
    get_user_client.cache_clear()


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def user_service(settings):
    """A real HTTP server standing in for the user service; point the client at it and script it."""

    def _serve(*steps):
        server = ScriptedServer(list(steps)).__enter__()
        servers.append(server)
        settings.USER_SVC_URL = server.url
        get_user_client.cache_clear()
        return server

    servers = []
    yield _serve
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def existing_user(user_service):
    return user_service(respond(200, {"id": 1, "name": "Ada", "email": "ada@example.com"}))
