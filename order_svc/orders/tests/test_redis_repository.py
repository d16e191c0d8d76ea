"""RedisOrderRepository against a real redis-server (started here; missing binary = failure, not skip)."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from orders.entities import Order, OrderItem
from orders.redis_repository import RedisOrderRepository, from_json, to_json
from orders.services import create_order
from svc_common.idempotency import IdempotencyKeyReused
from svc_common.repository import IdempotencyKeyTaken, RepositoryUnavailable, get_repository
from testsupport.redis_server import redis_server_binary, start_redis

BIG_USER_ID = 2**63 - 1  # beyond a double's exact range: must never pass through a Lua number


@pytest.fixture
def repo(redis_server):
    return RedisOrderRepository.from_url(redis_server.url(), f"test-{uuid.uuid4().hex[:8]}:")


def order(user_id, n=1, created_at=None):
    items = (OrderItem(sku=f"SKU-{n}", quantity=n, unit_price=Decimal("10.50")),)
    return Order(
        id=None,
        user_id=user_id,
        items=items,
        total=Decimal("10.50") * n,
        created_at=created_at or datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )


def assert_exactly_equal(a: Order, b: Order):
    """Equal, and also the same digits, exponents and offsets (Decimal("1.0") == Decimal("1.00"))."""
    assert a == b
    assert str(a.total) == str(b.total)
    assert [str(i.unit_price) for i in a.items] == [str(i.unit_price) for i in b.items]
    assert a.created_at.isoformat() == b.created_at.isoformat()
    assert a.created_at.utcoffset() == b.created_at.utcoffset()


def test_redis_server_is_installed():
    assert redis_server_binary()


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime.now(UTC),
    ],
)
def test_round_trip_is_exact(created_at):
    original = Order(
        id=12,
        user_id=BIG_USER_ID,
        items=(
            OrderItem(sku="ÄPFEL-1", quantity=3, unit_price=Decimal("0.10")),
            OrderItem(sku="B", quantity=10_000, unit_price=Decimal("9999999999.99")),
            OrderItem(sku="free", quantity=1, unit_price=Decimal("0.00")),
        ),
        total=Decimal("99999999999900.30"),
        created_at=created_at,
    )
    assert_exactly_equal(from_json(to_json(original)), original)
    assert isinstance(from_json(to_json(original)).items, tuple)


def test_add_get_and_stored_document(repo, redis_server):
    stored = repo.add(order(BIG_USER_ID, 3))
    assert stored.id == 1
    assert_exactly_equal(repo.get(1), stored)
    assert redis_server.client().get(f"{repo.prefix}entity:1") == to_json(stored)
    assert repo.count(user_id=BIG_USER_ID) == 1
    assert repo.page(0, 10, user_id=BIG_USER_ID) == [stored]
    assert repo.get(2) is None


def test_paging_order_and_counts(repo):
    stored = [repo.add(order(user_id=1 + n % 3, n=n)) for n in range(1, 31)]
    assert repo.count() == 30
    assert repo.page(0, 12) == stored[:12]
    assert repo.page(24, 12) == stored[24:]
    assert repo.page(30, 12) == []
    assert repo.page(0, 0) == []
    assert [o.id for o in repo.page(0, 100)] == list(range(1, 31))


def test_filter_by_user_id(repo):
    stored = [repo.add(order(user_id=1 + n % 3, n=n)) for n in range(1, 31)]
    for user_id in (1, 2, 3):
        expected = [o for o in stored if o.user_id == user_id]
        assert repo.count(user_id=user_id) == len(expected) == 10
        assert repo.page(0, 100, user_id=user_id) == expected
        assert repo.page(3, 4, user_id=user_id) == expected[3:7]
    assert repo.count(user_id=4) == 0
    assert repo.page(0, 10, user_id=4) == []


def test_unknown_filter_is_an_error(repo):
    with pytest.raises(KeyError):
        repo.page(0, 10, sku="x")


def test_concurrent_adds_get_distinct_ids_and_consistent_indexes(repo, redis_server):
    other = RedisOrderRepository.from_url(redis_server.url(), repo.prefix)  # a second "process"
    with ThreadPoolExecutor(32) as pool:
        created = list(
            pool.map(lambda n: (repo if n % 2 else other).add(order(user_id=1 + n % 5, n=1 + n % 7)), range(300))
        )
    assert sorted(o.id for o in created) == list(range(1, 301))
    assert repo.count() == 300
    for user_id in range(1, 6):
        mine = sorted((o for o in created if o.user_id == user_id), key=lambda o: o.id)
        assert repo.count(user_id=user_id) == len(mine) == 60
        assert repo.page(0, 100, user_id=user_id) == mine


def test_from_settings(settings, redis_server):
    settings.REDIS_URL = redis_server.url(1)
    settings.REDIS_KEY_PREFIX = "orders-from-settings:"
    settings.REDIS_SOCKET_TIMEOUT = 0.4
    settings.REPOSITORY_CLASS = "orders.redis_repository.RedisOrderRepository"
    get_repository.cache_clear()
    try:
        repo = get_repository()
    finally:
        get_repository.cache_clear()
    assert isinstance(repo, RedisOrderRepository)
    assert repo.client.connection_pool.connection_kwargs["socket_timeout"] == 0.4
    repo.ping()


def test_stopped_server_raises_repository_unavailable(tmp_path):
    server = start_redis(tmp_path / "redis")
    try:
        repo = RedisOrderRepository.from_url(server.url(), "down:", socket_timeout=0.5)
        repo.add(order(1))
        server.stop()
        for call in (
            repo.ping,
            lambda: repo.get(1),
            lambda: repo.add(order(1)),
            lambda: repo.count(user_id=1),
            lambda: repo.page(0, 10, user_id=1),
        ):
            with pytest.raises(RepositoryUnavailable):
                call()
    finally:
        server.stop()


# Idempotency keys in Redis.


class EveryUserExists:
    def __init__(self):
        self.checks = 0

    def user_exists(self, user_id):
        self.checks += 1
        return True


ITEMS = [{"sku": "A", "quantity": 2, "unit_price": Decimal("1.25")}]


def test_idempotency_key_is_stored_with_the_order_and_expires_in_24_hours(repo, redis_server):
    stored = repo.add(order(BIG_USER_ID), idempotency_key="k", fingerprint="fp-1")
    raw = redis_server.client()
    assert raw.hgetall(f"{repo.prefix}idempotency:k") == {"id": "1", "fingerprint": "fp-1"}
    assert 24 * 3600 - 5 <= raw.ttl(f"{repo.prefix}idempotency:k") <= 24 * 3600
    found = repo.find_by_idempotency_key("k")
    assert found.fingerprint == "fp-1"
    assert_exactly_equal(found.entity, stored)
    keys_before = sorted(raw.keys(f"{repo.prefix}*"))
    with pytest.raises(IdempotencyKeyTaken) as taken:
        repo.add(order(2), idempotency_key="k", fingerprint="fp-2")
    assert_exactly_equal(taken.value.record.entity, stored)
    assert taken.value.record.fingerprint == "fp-1"
    assert sorted(raw.keys(f"{repo.prefix}*")) == keys_before  # not even the id counter moved
    assert repo.count(user_id=2) == 0


def test_service_replay_skips_the_user_check_and_mismatch_is_refused(repo):
    users = EveryUserExists()
    first = create_order(user_id=1, items=ITEMS, repository=repo, user_client=users, idempotency_key="k")
    again = create_order(user_id=1, items=ITEMS, repository=repo, user_client=users, idempotency_key="k")
    assert (first.replayed, again.replayed) == (False, True)
    assert_exactly_equal(again.entity, first.entity)
    with pytest.raises(IdempotencyKeyReused):
        create_order(user_id=2, items=ITEMS, repository=repo, user_client=users, idempotency_key="k")
    assert users.checks == 1
    assert repo.count() == 1


def test_fifty_threads_on_two_clients_racing_with_one_key_store_one_order(repo, redis_server):
    other = RedisOrderRepository.from_url(redis_server.url(), repo.prefix)
    users = EveryUserExists()
    barrier = threading.Barrier(50)

    def attempt(n):
        barrier.wait()
        return create_order(
            user_id=1, items=ITEMS, repository=(repo, other)[n % 2], user_client=users, idempotency_key="race"
        )

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert repo.count() == 1 and repo.count(user_id=1) == 1
    assert {result.entity for result in results} == {repo.get(1)}
    assert [result.replayed for result in results].count(False) == 1
