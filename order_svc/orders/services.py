"""What the order service does, as plain functions the views call."""

from datetime import UTC, datetime
from decimal import Decimal

import structlog
from rest_framework.exceptions import ValidationError

from orders.entities import Order, OrderItem
from orders.metrics import ORDERS_CREATED
from orders.user_client import UserClient
from svc_common.repository import Repository

logger = structlog.get_logger(__name__)
CENT = Decimal("0.01")


class UserNotFound(Exception):
    def __init__(self, user_id: int):
        super().__init__(f"User {user_id} not found")


def order_total(items: list[OrderItem]) -> Decimal:
    """The exact sum of quantity × unit price, in cents (prices carry at most two places)."""
    return sum((item.quantity * item.unit_price for item in items), Decimal("0")).quantize(CENT)


def create_order(
    *,
    user_id: int,
    items: list[dict],
    total: Decimal | None = None,
    repository: Repository[Order],
    user_client: UserClient,
) -> Order:
    """Validate the total, confirm the user exists, then store; nothing is stored on any failure."""
    order_items = tuple(OrderItem(**item) for item in items)
    computed = order_total(order_items)
    if total is not None and total != computed:
        raise ValidationError({"total": [f"Total {total} does not match the items' total {computed}."]})
    structlog.contextvars.bind_contextvars(user_id=user_id)
    if not user_client.user_exists(user_id):
        raise UserNotFound(user_id)
    order = repository.add(
        Order(id=None, user_id=user_id, items=order_items, total=computed, created_at=datetime.now(UTC))
    )
    ORDERS_CREATED.inc()
    structlog.contextvars.bind_contextvars(order_id=order.id)  # the rest of the request's lines too
    logger.info("order_created", order_id=order.id, item_count=len(order_items))
    return order
