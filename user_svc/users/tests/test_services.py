import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from svc_common.storage.idempotency import IdempotencyKeyReused
from users.metrics import USERS_CREATED
from users.repositories import InMemoryUserRepository
from users.services import EmailAlreadyRegistered, create_user


def test_create_user_stores_and_returns_the_user():
    repository = InMemoryUserRepository()
    user, replayed = create_user(name="Ada", email="ada@example.com", repository=repository)
    assert user.id == 1 and not replayed
    assert repository.get(1) == user


def test_duplicate_email_raises_domain_error_and_stores_nothing():
    repository = InMemoryUserRepository()
    create_user(name="Ada", email="ada@example.com", repository=repository)
    with pytest.raises(EmailAlreadyRegistered):
        create_user(name="Other", email="ADA@example.com", repository=repository)
    assert repository.count() == 1


# Idempotency keys, on the in-memory repository.


def test_same_key_and_data_replays_the_first_user_and_stores_nothing():
    repository = InMemoryUserRepository()
    first = create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1")
    again = create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1")
    assert first.replayed is False and again.replayed is True
    assert again.entity == first.entity == repository.get(1)
    assert repository.count() == 1


def test_replay_is_checked_before_the_email_so_a_retry_is_never_a_conflict():
    repository = InMemoryUserRepository()
    create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1")
    assert create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1").replayed
    with pytest.raises(EmailAlreadyRegistered):  # without the key (or another key) it is still a clash
        create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-2")
    assert repository.count() == 1


def test_a_failed_create_does_not_keep_its_key():
    repository = InMemoryUserRepository()
    create_user(name="Ada", email="ada@example.com", repository=repository)
    with pytest.raises(EmailAlreadyRegistered):
        create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1")
    assert repository.find_by_idempotency_key("k-1") is None
    assert create_user(name="Bob", email="bob@example.com", repository=repository, idempotency_key="k-1").entity.id == 2


@pytest.mark.parametrize(("name", "email"), [("Ada L.", "ada@example.com"), ("Ada", "ADA@example.com")])
def test_same_key_with_different_data_is_refused_and_stores_nothing(name, email):
    repository = InMemoryUserRepository()
    create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1")
    with pytest.raises(IdempotencyKeyReused, match='Idempotency-Key "k-1" was used with a different request'):
        create_user(name=name, email=email, repository=repository, idempotency_key="k-1")
    assert repository.count() == 1


def test_replays_do_not_count_as_created_users():
    repository = InMemoryUserRepository()
    before = USERS_CREATED._value.get()
    for _ in range(3):
        create_user(name="Ada", email="ada@example.com", repository=repository, idempotency_key="k-1")
    assert USERS_CREATED._value.get() - before == 1


def test_fifty_threads_racing_with_one_key_store_one_user_and_all_get_it():
    repository = InMemoryUserRepository()
    barrier = threading.Barrier(50)

    def attempt(n):
        barrier.wait()
        return create_user(name="Racer", email="racer@example.com", repository=repository, idempotency_key="race")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert repository.count() == 1
    assert {result.entity for result in results} == {repository.get(1)}
    assert [result.replayed for result in results].count(False) == 1
