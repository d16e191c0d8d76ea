import datetime as dt
import gc
from decimal import Decimal

from orders.entities import Order, OrderItem
from orders.repositories import InMemoryOrderRepository


def new_order(user_id: int, items: int = 2) -> Order:
    lines = tuple(OrderItem(sku=f"SKU-{n}", quantity=n + 1, unit_price=Decimal("9.99")) for n in range(items))
    total = sum((item.unit_price * item.quantity for item in lines), Decimal("0.00"))
    return Order(id=None, user_id=user_id, items=lines, total=total, created_at=dt.datetime.now(dt.UTC))


def test_stored_orders_give_the_garbage_collector_nothing_to_walk():
    """Each order is an order, a tuple and its items as objects: none of them may stay tracked."""
    repository = InMemoryOrderRepository()
    repository.add(new_order(1))
    gc.collect()
    before = len(gc.get_objects())
    for n in range(5000):
        repository.add(new_order(n % 10 + 1))
    gc.collect()
    assert len(gc.get_objects()) - before < 100


def test_orders_read_back_equal_with_their_items_and_by_user():
    repository = InMemoryOrderRepository()
    stored = [repository.add(new_order(user_id, items=user_id)) for user_id in (1, 2, 1, 3)]
    assert [repository.get(order.id) for order in stored] == stored
    assert repository.page(0, 10, user_id=1) == [stored[0], stored[2]]
    assert repository.count(user_id=1) == 2
