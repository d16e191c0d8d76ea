import gc
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from svc_common.storage.repository import IdempotencyKeyTaken, IdempotentRecord, UniqueViolation
from users.entities import User
from users.repositories import InMemoryUserRepository


def new_user(n, email=None):
    return User(id=None, name=f"User {n}", email=email or f"user{n}@example.com")


def test_ids_are_increasing_from_one():
    repository = InMemoryUserRepository()
    ids = [repository.add(new_user(n)).id for n in range(5)]
    assert ids == [1, 2, 3, 4, 5]


def test_concurrent_adds_from_many_threads_get_distinct_ids_and_all_are_readable():
    repository = InMemoryUserRepository()
    with ThreadPoolExecutor(max_workers=32) as pool:
        users = list(pool.map(lambda n: repository.add(new_user(n)), range(2000)))
    ids = [user.id for user in users]
    assert len(set(ids)) == 2000
    assert sorted(ids) == list(range(1, 2001))
    assert all(repository.get(user.id) == user for user in users)
    assert repository.count() == 2000


def test_email_uniqueness_ignores_case():
    repository = InMemoryUserRepository()
    repository.add(new_user(1, "Ada@Example.com"))
    with pytest.raises(UniqueViolation):
        repository.add(new_user(2, "ada@example.COM"))
    assert repository.count() == 1


def test_racing_duplicate_emails_store_exactly_one():
    repository = InMemoryUserRepository()

    def attempt(n):
        try:
            return repository.add(new_user(n, "Same@Example.com" if n % 2 else "same@example.com"))
        except UniqueViolation:
            return None

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(attempt, range(200)))
    assert len([r for r in results if r is not None]) == 1
    assert repository.count() == 1


def test_page_returns_id_order_slices():
    repository = InMemoryUserRepository()
    for n in range(10):
        repository.add(new_user(n))
    assert [u.id for u in repository.page(0, 3)] == [1, 2, 3]
    assert [u.id for u in repository.page(8, 5)] == [9, 10]
    assert repository.page(20, 5) == []


def test_get_unknown_id_is_none():
    assert InMemoryUserRepository().get(1) is None


def test_an_idempotency_key_is_stored_with_the_entity_and_wins_over_unique_values():
    repository = InMemoryUserRepository()
    stored = repository.add(new_user(1, "ada@example.com"), idempotency_key="k", fingerprint="fp-1")
    assert repository.find_by_idempotency_key("k") == IdempotentRecord(stored, "fp-1")
    assert repository.find_by_idempotency_key("other") is None
    with pytest.raises(IdempotencyKeyTaken) as taken:  # not UniqueViolation: the key is checked first
        repository.add(new_user(1, "ada@example.com"), idempotency_key="k", fingerprint="fp-2")
    assert taken.value.record == IdempotentRecord(stored, "fp-1")
    assert repository.count() == 1
    assert repository.add(new_user(2)).id == 2  # the refused add took no id


def test_idempotency_keys_expire_after_the_ttl(monkeypatch):
    repository = InMemoryUserRepository()
    assert repository.idempotency_ttl == 24 * 60 * 60
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    repository.add(new_user(1), idempotency_key="old", fingerprint="fp")
    now[0] += 24 * 60 * 60 - 1
    assert repository.find_by_idempotency_key("old") is not None
    now[0] += 1
    assert repository.find_by_idempotency_key("old") is None
    assert repository.add(new_user(2), idempotency_key="old", fingerprint="fp").id == 2


def test_expired_idempotency_keys_are_dropped_as_new_ones_arrive(monkeypatch):
    repository = InMemoryUserRepository()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    for n in range(10):
        repository.add(new_user(n), idempotency_key=f"k{n}", fingerprint="fp")
    now[0] += 24 * 60 * 60
    repository.add(new_user(10), idempotency_key="fresh", fingerprint="fp")
    assert list(repository._idempotency) == ["fresh"]


def test_stored_users_give_the_garbage_collector_nothing_to_walk():
    """A full collection stops the event loop for as long as it walks: the store must not grow it."""
    repository = InMemoryUserRepository()
    repository.add(new_user(0))
    gc.collect()
    before = len(gc.get_objects())
    for n in range(1, 5001):
        repository.add(new_user(n))
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # the index lists and sets grow; no object per user
    assert repository.get(4321) == User(id=4321, name="User 4320", email="user4320@example.com")


def test_each_read_is_a_copy_of_what_was_stored():
    repository = InMemoryUserRepository()
    stored = repository.add(new_user(1))
    assert repository.get(stored.id) == stored and repository.get(stored.id) is not repository.get(stored.id)
    assert repository.page(0, 10) == [stored]
