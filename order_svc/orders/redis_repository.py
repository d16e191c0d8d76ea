"""Orders in Redis (``REPOSITORY_BACKEND=redis``), indexed by user_id.

Decimals are stored as strings and datetimes as ISO 8601 with their offset, so both come back
exactly as stored (``Decimal("10.50")`` stays ``10.50``)."""

import json
from datetime import datetime
from decimal import Decimal

from orders.entities import Order, OrderItem
from orders.repositories import OrderStorageRules
from svc_common.redis_repository import RedisRepository


def to_json(order: Order) -> str:
    return json.dumps(
        {
            "id": order.id,
            "user_id": order.user_id,
            "items": [
                {"sku": item.sku, "quantity": item.quantity, "unit_price": str(item.unit_price)} for item in order.items
            ],
            "total": str(order.total),
            "created_at": order.created_at.isoformat(),
        },
        separators=(",", ":"),
    )


def from_json(raw: str) -> Order:
    data = json.loads(raw)
    return Order(
        id=data["id"],
        user_id=data["user_id"],
        items=tuple(
            OrderItem(sku=item["sku"], quantity=item["quantity"], unit_price=Decimal(item["unit_price"]))
            for item in data["items"]
        ),
        total=Decimal(data["total"]),
        created_at=datetime.fromisoformat(data["created_at"]),
    )


class RedisOrderRepository(OrderStorageRules, RedisRepository[Order]):
    def to_json(self, entity: Order) -> str:
        return to_json(entity)

    def from_json(self, raw: str) -> Order:
        return from_json(raw)
