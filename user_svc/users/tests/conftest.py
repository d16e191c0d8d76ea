import pytest
from rest_framework.test import APIClient

from svc_common.storage.repository import get_repository


@pytest.fixture(autouse=True)
def fresh_repository():
    """Each test starts with an empty in-memory store."""
    get_repository.cache_clear()
    yield get_repository()
    get_repository.cache_clear()


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def make_user(api):
    """Factory: create a user through the API and return its JSON."""
    counter = iter(range(1, 10**6))

    def _make(name=None, email=None):
        n = next(counter)
        response = api.post(
            "/users", {"name": name or f"User {n}", "email": email or f"user{n}@example.com"}, format="json"
        )
        assert response.status_code == 201, response.content
        return response.json()

    return _make
