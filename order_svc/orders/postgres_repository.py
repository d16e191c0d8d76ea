"""Orders and their items in PostgreSQL (``REPOSITORY_BACKEND=postgres``), indexed by user_id.

Prices and totals are numeric(…, 2) and created_at a timestamptz (microseconds), so an order reads
back exactly as it was stored."""

from typing import Any

from django.db.models import Prefetch, QuerySet

from orders.entities import Order, OrderItem
from orders.models import OrderIdempotencyKey, OrderItemRow, OrderRow
from orders.repositories import OrderStorageRules
from svc_common.storage.postgres_repository import PostgresRepository


class PostgresOrderRepository(OrderStorageRules, PostgresRepository[Order]):
    model = OrderRow
    key_model = OrderIdempotencyKey

    def rows(self) -> QuerySet[Any]:
        items = OrderItemRow.objects.using(self.using).order_by("position")
        return super().rows().prefetch_related(Prefetch("items", queryset=items))

    def to_entity(self, row: Any) -> Order:
        return Order(
            id=row.id,
            user_id=row.user_id,
            items=tuple(
                OrderItem(sku=item.sku, quantity=item.quantity, unit_price=item.unit_price) for item in row.items.all()
            ),
            total=row.total,
            created_at=row.created_at,
        )

    def insert(self, entity: Order) -> OrderRow:
        row = OrderRow.objects.using(self.using).create(
            user_id=entity.user_id, total=entity.total, created_at=entity.created_at
        )
        OrderItemRow.objects.using(self.using).bulk_create(
            OrderItemRow(order=row, position=n, sku=item.sku, quantity=item.quantity, unit_price=item.unit_price)
            for n, item in enumerate(entity.items)
        )
        return row
