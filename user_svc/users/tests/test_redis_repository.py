"""RedisUserRepository against a real redis-server (started here; missing binary = failure, not skip)."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from svc_common.idempotency import IdempotencyKeyReused
from svc_common.repository import (
    IdempotencyKeyTaken,
    IdempotentRecord,
    RepositoryUnavailable,
    UniqueViolation,
    get_repository,
)
from testsupport.redis_server import redis_server_binary, start_redis
from users.entities import User
from users.redis_repository import RedisUserRepository, from_json, to_json
from users.services import EmailAlreadyRegistered, create_user


@pytest.fixture
def repo(redis_server):
    """A fresh key space per test on the shared server."""
    return RedisUserRepository.from_url(redis_server.url(), f"test-{uuid.uuid4().hex[:8]}:")


def user(n, email=None):
    return User(id=None, name=f"User {n}", email=email or f"user{n}@example.com")


def test_redis_server_is_installed():
    assert redis_server_binary()


def test_round_trip_is_exact():
    original = User(id=7, name='Zoë "Z" Ångström \u2603', email="Zoe.Angstrom@Example.COM")
    assert from_json(to_json(original)) == original
    assert to_json(original).startswith('{"id":7,')


def test_add_assigns_increasing_ids_and_stores_exactly(repo, redis_server):
    first = repo.add(User(id=None, name="Ada Lövelace", email="Ada@Example.com"))
    second = repo.add(user(2))
    assert (first.id, second.id) == (1, 2)
    assert first == User(id=1, name="Ada Lövelace", email="Ada@Example.com")
    assert repo.get(1) == first and repo.get(2) == second
    assert repo.get(3) is None
    # What is stored is exactly to_json of the entity with its id.
    assert redis_server.client().get(f"{repo.prefix}entity:1") == to_json(first)


def test_paging_order_and_counts(repo):
    stored = [repo.add(user(n)) for n in range(1, 26)]
    assert repo.count() == 25
    assert repo.page(0, 10) == stored[:10]
    assert repo.page(10, 10) == stored[10:20]
    assert repo.page(20, 10) == stored[20:]
    assert repo.page(25, 10) == []
    assert repo.page(100, 10) == []
    assert repo.page(0, 0) == []  # not "everything", which ZRANGE 0 -1 would mean
    assert [u.id for u in repo.page(0, 100)] == list(range(1, 26))


def test_unique_email_clash_stores_nothing(repo, redis_server):
    repo.add(user(1, "Same@Example.com"))
    keys_before = sorted(redis_server.client().keys(f"{repo.prefix}*"))
    with pytest.raises(UniqueViolation) as excinfo:
        repo.add(User(id=None, name="Other", email="sAME@example.COM"))
    assert excinfo.value.field == "email"
    assert sorted(redis_server.client().keys(f"{repo.prefix}*")) == keys_before
    assert repo.count() == 1
    assert repo.add(user(2)).id == 2  # the failed add did not even take an id


def test_prefixes_are_isolated(redis_server):
    a = RedisUserRepository.from_url(redis_server.url(), f"a-{uuid.uuid4().hex[:8]}:")
    b = RedisUserRepository.from_url(redis_server.url(), f"b-{uuid.uuid4().hex[:8]}:")
    a.add(user(1, "x@example.com"))
    assert b.add(user(1, "x@example.com")).id == 1
    assert a.count() == b.count() == 1


def test_concurrent_adds_from_many_threads_and_clients_get_distinct_ids(repo, redis_server):
    # Two repositories with their own connection pools stand in for two processes.
    other = RedisUserRepository.from_url(redis_server.url(), repo.prefix)
    with ThreadPoolExecutor(32) as pool:
        created = list(pool.map(lambda n: (repo if n % 2 else other).add(user(n)), range(400)))
    ids = [u.id for u in created]
    assert sorted(ids) == list(range(1, 401))
    assert repo.count() == 400
    everything = repo.page(0, 1000)
    assert [u.id for u in everything] == list(range(1, 401))
    assert {u.email for u in everything} == {f"user{n}@example.com" for n in range(400)}
    assert all(repo.get(u.id) == u for u in created)


def test_racing_duplicate_emails_exactly_one_wins(repo, redis_server):
    other = RedisUserRepository.from_url(redis_server.url(), repo.prefix)
    variants = ["race@example.com", "RACE@example.com", "Race@Example.Com", "race@EXAMPLE.COM"]
    for round_number in range(5):
        barrier = threading.Barrier(40)
        email_base = f"round{round_number}"

        def attempt(n, barrier=barrier, email_base=email_base):
            barrier.wait()
            try:
                return (repo if n % 2 else other).add(user(n, email_base + variants[n % 4]))
            except UniqueViolation:
                return None

        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(attempt, range(40)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, winners
    assert repo.count() == 5


def test_unknown_filter_is_an_error(repo):
    with pytest.raises(KeyError):
        repo.count(email="x@example.com")


def test_from_settings_fails_fast_without_retries(settings, redis_server):
    settings.REDIS_URL = redis_server.url(3)
    settings.REDIS_KEY_PREFIX = "from-settings:"
    settings.REDIS_SOCKET_TIMEOUT = 0.25
    get_repository.cache_clear()
    settings.REPOSITORY_CLASS = "users.redis_repository.RedisUserRepository"
    try:
        repo = get_repository()
    finally:
        get_repository.cache_clear()
    assert isinstance(repo, RedisUserRepository)
    assert repo.prefix == "from-settings:"
    kwargs = repo.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["db"] == 3
    assert kwargs["health_check_interval"] > 0
    assert kwargs["retry"].get_retries() == 0
    repo.ping()


@pytest.fixture
def own_redis(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def assert_unavailable_quickly(call, limit):
    started = time.monotonic()
    with pytest.raises(RepositoryUnavailable):
        call()
    assert time.monotonic() - started < limit


def test_stopped_server_raises_repository_unavailable(own_redis):
    repo = RedisUserRepository.from_url(own_redis.url(), "down:", socket_timeout=0.5)
    repo.add(user(1))
    own_redis.stop()
    for call in (repo.ping, lambda: repo.get(1), lambda: repo.add(user(2)), repo.count, lambda: repo.page(0, 10)):
        assert_unavailable_quickly(call, 1.0)
    own_redis.start()  # same port and directory: the append-only file brings the data back
    assert repo.get(1) == User(id=1, name="User 1", email="user1@example.com")
    assert repo.add(user(2)).id == 2


def test_hung_server_raises_repository_unavailable_after_the_socket_timeout(own_redis):
    repo = RedisUserRepository.from_url(own_redis.url(), "hung:", socket_timeout=0.3)
    repo.add(user(1))
    own_redis.pause()
    try:
        for call in (repo.ping, lambda: repo.get(1), repo.count):
            assert_unavailable_quickly(call, 1.0)
    finally:
        own_redis.resume()
    assert repo.get(1) is not None


# Idempotency keys in Redis.


def test_idempotency_key_is_stored_in_the_add_script_with_its_ttl(repo, redis_server):
    stored = repo.add(user(1), idempotency_key="key: with spaces/and:colons", fingerprint="fp-1")
    raw = redis_server.client()
    key = f"{repo.prefix}idempotency:key: with spaces/and:colons"
    assert raw.hgetall(key) == {"id": "1", "fingerprint": "fp-1"}
    assert 24 * 3600 - 5 <= raw.ttl(key) <= 24 * 3600
    assert repo.find_by_idempotency_key("key: with spaces/and:colons") == IdempotentRecord(stored, "fp-1")
    assert repo.find_by_idempotency_key("unknown") is None


def test_a_held_key_writes_nothing_and_answers_with_the_stored_entity(repo, redis_server):
    stored = repo.add(user(1, "ada@example.com"), idempotency_key="k", fingerprint="fp-1")
    keys_before = sorted(redis_server.client().keys(f"{repo.prefix}*"))
    with pytest.raises(IdempotencyKeyTaken) as taken:  # the key wins over the email clash
        repo.add(User(id=None, name="Other", email="ADA@example.com"), idempotency_key="k", fingerprint="fp-2")
    assert taken.value.record == IdempotentRecord(stored, "fp-1")
    assert sorted(redis_server.client().keys(f"{repo.prefix}*")) == keys_before
    assert repo.add(user(2)).id == 2


def test_an_expired_key_is_forgotten(repo):
    repo.idempotency_ttl = 1
    repo.add(user(1), idempotency_key="short", fingerprint="fp")
    time.sleep(1.2)
    assert repo.find_by_idempotency_key("short") is None
    assert repo.add(user(2), idempotency_key="short", fingerprint="fp").id == 2


def test_service_replay_and_mismatch_on_redis(repo):
    first = create_user(name="Ada", email="ada@example.com", repository=repo, idempotency_key="k")
    again = create_user(name="Ada", email="ada@example.com", repository=repo, idempotency_key="k")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.entity == first.entity == repo.get(1)
    with pytest.raises(IdempotencyKeyReused):
        create_user(name="Ada", email="other@example.com", repository=repo, idempotency_key="k")
    assert repo.count() == 1


def test_idempotency_keys_are_per_prefix(redis_server):
    users = RedisUserRepository.from_url(redis_server.url(), f"u-{uuid.uuid4().hex[:8]}:")
    others = RedisUserRepository.from_url(redis_server.url(), f"o-{uuid.uuid4().hex[:8]}:")
    users.add(user(1), idempotency_key="shared", fingerprint="fp")
    assert others.find_by_idempotency_key("shared") is None
    assert others.add(user(1), idempotency_key="shared", fingerprint="fp").id == 1


def test_fifty_threads_on_two_clients_racing_with_one_key_store_one_user(repo, redis_server):
    other = RedisUserRepository.from_url(redis_server.url(), repo.prefix)
    barrier = threading.Barrier(50)

    def attempt(n):
        barrier.wait()
        return create_user(
            name="Racer", email="racer@example.com", repository=(repo, other)[n % 2], idempotency_key="race"
        )

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert repo.count() == 1
    assert {result.entity for result in results} == {repo.get(1)}
    assert [result.replayed for result in results].count(False) == 1


def test_a_create_that_timed_out_but_ran_later_is_replayed_on_retry(own_redis):
    """The reason for idempotency keys: Redis hung past the socket timeout, the client got 503, yet
    Redis ran the script when it resumed. The retry with the same key gets that user, not a 409."""
    repo = RedisUserRepository.from_url(own_redis.url(), "late:", socket_timeout=0.3)
    repo.add(user(0))  # a pooled connection with the script loaded: the next add is one EVALSHA
    own_redis.pause()
    try:
        with pytest.raises(RepositoryUnavailable):
            create_user(name="Ada", email="ada@example.com", repository=repo, idempotency_key="retry-me")
    finally:
        own_redis.resume()
    deadline = time.monotonic() + 5
    while repo.count() == 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert repo.count() == 2  # the "failed" create was applied after all
    retried = create_user(name="Ada", email="ada@example.com", repository=repo, idempotency_key="retry-me")
    assert retried.replayed and retried.entity == User(id=2, name="Ada", email="ada@example.com")
    with pytest.raises(EmailAlreadyRegistered):  # what the retry would have got without a key
        create_user(name="Ada", email="ada@example.com", repository=repo)
    assert repo.count() == 2
