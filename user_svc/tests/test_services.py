import pytest

from users.repositories import InMemoryUserRepository
from users.services import EmailAlreadyRegistered, create_user


def test_create_user_stores_and_returns_the_user():
    repository = InMemoryUserRepository()
    user = create_user(name="Ada", email="ada@example.com", repository=repository)
    assert user.id == 1
    assert repository.get(1) == user


def test_duplicate_email_raises_domain_error_and_stores_nothing():
    repository = InMemoryUserRepository()
    create_user(name="Ada", email="ada@example.com", repository=repository)
    with pytest.raises(EmailAlreadyRegistered):
        create_user(name="Other", email="ADA@example.com", repository=repository)
    assert repository.count() == 1
