import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from orders.entities import OrderItem
from orders.metrics import ORDERS_CREATED
from orders.repositories import InMemoryOrderRepository
from orders.services import TotalMismatch, UserNotFound, create_order, order_total
from orders.user_client import UserClient
from svc_common.storage.idempotency import IdempotencyKeyReused
from testsupport.scripted_server import ScriptedServer, respond


def test_total_is_exact_decimal_sum():
    items = [OrderItem("A", 3, Decimal("0.10")), OrderItem("B", 1, Decimal("0.20"))]
    assert order_total(items) == Decimal("0.50")  # floats would give 0.5000000000000001
    assert str(order_total(items)) == "0.50"


def test_largest_total_is_exact():
    items = [OrderItem(f"S{i}", 10_000, Decimal("9999999999.99")) for i in range(100)]
    assert order_total(items) == Decimal("9999999999990000.00")


def client_for(server):
    return UserClient(server.url, connect_timeout=0.5, read_timeout=0.5, attempts=3, deadline=3)


ITEMS = [{"sku": "A", "quantity": 2, "unit_price": Decimal("1.25")}]


def test_mismatched_total_is_rejected_before_calling_the_user_service():
    repository = InMemoryOrderRepository()
    with ScriptedServer([respond(200)]) as server, pytest.raises(TotalMismatch) as error:
        create_order(
            user_id=1, items=ITEMS, total=Decimal("2.49"), repository=repository, user_client=client_for(server)
        )
    assert error.value.field == "total"
    assert str(error.value) == "Total 2.49 does not match the items' total 2.50."
    assert server.requests == []
    assert repository.count() == 0


def test_matching_total_is_accepted():
    repository = InMemoryOrderRepository()
    with ScriptedServer([respond(200)]) as server:
        order, replayed = create_order(
            user_id=1, items=ITEMS, total=Decimal("2.50"), repository=repository, user_client=client_for(server)
        )
    assert not replayed
    assert order.total == Decimal("2.50")
    assert repository.get(order.id) == order


def test_unknown_user_stores_nothing():
    repository = InMemoryOrderRepository()
    with ScriptedServer([respond(404, {"detail": "User 9 not found"})]) as server:
        with pytest.raises(UserNotFound, match="User 9 not found"):
            create_order(user_id=9, items=ITEMS, repository=repository, user_client=client_for(server))
    assert repository.count() == 0


# Idempotency keys, on the in-memory repository.


class CountingUserClient:
    """Every user exists; counts the checks."""

    def __init__(self):
        self.checks = 0
        self._lock = threading.Lock()

    def user_exists(self, user_id):
        with self._lock:
            self.checks += 1
        return True


def test_same_key_and_data_replays_the_first_order_without_asking_the_user_service():
    repository, users = InMemoryOrderRepository(), CountingUserClient()
    first = create_order(user_id=1, items=ITEMS, repository=repository, user_client=users, idempotency_key="k")
    again = create_order(
        user_id=1,
        items=[{"sku": "A", "quantity": 2, "unit_price": Decimal("1.25")}],
        repository=repository,
        user_client=users,
        idempotency_key="k",
    )
    assert (first.replayed, again.replayed) == (False, True)
    assert again.entity == first.entity == repository.get(1)
    assert repository.count() == 1
    assert users.checks == 1


def test_replays_do_not_count_as_created_orders():
    repository, users = InMemoryOrderRepository(), CountingUserClient()
    before = ORDERS_CREATED._value.get()
    for _ in range(3):
        create_order(user_id=1, items=ITEMS, repository=repository, user_client=users, idempotency_key="k")
    assert ORDERS_CREATED._value.get() - before == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": 2},
        {"items": [{"sku": "A", "quantity": 3, "unit_price": Decimal("1.25")}]},
        {"total": Decimal("2.50")},  # the same order, but not the same request
    ],
)
def test_same_key_with_different_data_is_refused_and_stores_nothing(changes):
    repository, users = InMemoryOrderRepository(), CountingUserClient()
    create_order(user_id=1, items=ITEMS, repository=repository, user_client=users, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused, match='Idempotency-Key "k" was used with a different request'):
        create_order(
            **{"user_id": 1, "items": ITEMS, **changes}, repository=repository, user_client=users, idempotency_key="k"
        )
    assert repository.count() == 1
    assert users.checks == 1


def test_a_key_stored_after_the_lookup_is_still_caught_by_the_atomic_add():
    """Two requests with one key both miss the early lookup; the add itself must stop the second."""
    repository, users = InMemoryOrderRepository(), CountingUserClient()
    repository.find_by_idempotency_key = lambda key: None  # as if both requests looked before either stored
    first = create_order(user_id=1, items=ITEMS, repository=repository, user_client=users, idempotency_key="k")
    again = create_order(user_id=1, items=ITEMS, repository=repository, user_client=users, idempotency_key="k")
    assert again.replayed and again.entity == first.entity
    with pytest.raises(IdempotencyKeyReused):
        create_order(user_id=9, items=ITEMS, repository=repository, user_client=users, idempotency_key="k")
    assert repository.count() == 1


def test_fifty_threads_racing_with_one_key_store_one_order_and_all_get_it():
    repository, users = InMemoryOrderRepository(), CountingUserClient()
    barrier = threading.Barrier(50)

    def attempt(n):
        barrier.wait()
        return create_order(user_id=1, items=ITEMS, repository=repository, user_client=users, idempotency_key="race")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert repository.count() == 1
    assert {result.entity for result in results} == {repository.get(1)}
    assert [result.replayed for result in results].count(False) == 1


def test_keys_are_not_shared_between_repositories():
    orders, others, users = InMemoryOrderRepository(), InMemoryOrderRepository(), CountingUserClient()
    create_order(user_id=1, items=ITEMS, repository=orders, user_client=users, idempotency_key="k")
    assert not create_order(user_id=1, items=ITEMS, repository=others, user_client=users, idempotency_key="k").replayed
