from decimal import Decimal

import pytest
from rest_framework.exceptions import ValidationError

from orders.entities import OrderItem
from orders.repositories import InMemoryOrderRepository
from orders.services import UserNotFound, create_order, order_total
from orders.user_client import UserClient
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
    with ScriptedServer([respond(200)]) as server:
        with pytest.raises(ValidationError) as error:
            create_order(user_id=1, items=ITEMS, total=Decimal("2.49"), repository=repository, user_client=client_for(server))
    assert "total" in error.value.detail
    assert server.requests == []
    assert repository.count() == 0


def test_matching_total_is_accepted():
    repository = InMemoryOrderRepository()
    with ScriptedServer([respond(200)]) as server:
        order = create_order(user_id=1, items=ITEMS, total=Decimal("2.50"), repository=repository, user_client=client_for(server))
    assert order.total == Decimal("2.50")
    assert repository.get(order.id) == order


def test_unknown_user_stores_nothing():
    repository = InMemoryOrderRepository()
    with ScriptedServer([respond(404, {"detail": "User 9 not found"})]) as server:
        with pytest.raises(UserNotFound, match="User 9 not found"):
            create_order(user_id=9, items=ITEMS, repository=repository, user_client=client_for(server))
    assert repository.count() == 0
