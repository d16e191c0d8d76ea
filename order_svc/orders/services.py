"""What the order service does, as plain functions the views call."""

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from orders.entities import Order, OrderItem
from orders.metrics import ORDERS_CREATED
from orders.user_client import UserClient
from svc_common.domain_errors import FieldError
from svc_common.storage.idempotency import Created, fingerprint, replay
from svc_common.storage.repository import IdempotencyKeyTaken, IdempotentRecord, Repository

logger = structlog.get_logger(__name__)
CENT = Decimal("0.01")


class UserNotFound(Exception):
    def __init__(self, user_id: int):
        super().__init__(f"User {user_id} not found")


class TotalMismatch(FieldError):
    """The client sent a total, and it is not the sum of the items."""

    def __init__(self, total: Decimal, computed: Decimal):
        super().__init__("total", f"Total {total} does not match the items' total {computed}.")


def order_total(items: Iterable[OrderItem]) -> Decimal:
    """The exact sum of quantity × unit price, in cents (prices carry at most two places)."""
    return sum((item.quantity * item.unit_price for item in items), Decimal("0")).quantize(CENT)


def create_order(
    *,
    user_id: int,
    items: list[dict[str, Any]],
    total: Decimal | None = None,
    repository: Repository[Order],
    user_client: UserClient,
    idempotency_key: str | None = None,
) -> Created[Order]:
    """Validate the total, confirm the user exists, then store; nothing is stored on any failure.

    With an idempotency key already stored by the same request, store nothing and return that
    request's order (``replayed``), without asking the user service again; stored by a different
    request: IdempotencyKeyReused. The early lookup only saves the user check: the key is stored in
    the same atomic add as the order, so racing requests with one key still store one order."""
    order_items = tuple(OrderItem(**item) for item in items)
    computed = order_total(order_items)
    if total is not None and total != computed:
        raise TotalMismatch(total, computed)
    structlog.contextvars.bind_contextvars(user_id=user_id)
    request_fingerprint = None
    if idempotency_key is not None:  # the fingerprint is only ever compared with a stored key's
        request_fingerprint = fingerprint({"user_id": user_id, "items": [dict(item) for item in items], "total": total})
        record = repository.find_by_idempotency_key(idempotency_key)
        if record is not None:
            return _replayed(record, idempotency_key, request_fingerprint)
    if not user_client.user_exists(user_id):
        raise UserNotFound(user_id)
    try:
        order = repository.add(
            Order(id=None, user_id=user_id, items=order_items, total=computed, created_at=datetime.now(UTC)),
            idempotency_key=idempotency_key,
            fingerprint=request_fingerprint,
        )
    except IdempotencyKeyTaken as taken:  # a request with the same key stored it since the lookup
        # Only ever raised for a request that sent a key, so both are set here.
        assert idempotency_key is not None and request_fingerprint is not None
        return _replayed(taken.record, idempotency_key, request_fingerprint)
    ORDERS_CREATED.inc()
    structlog.contextvars.bind_contextvars(order_id=order.id)  # the rest of the request's lines too
    logger.info("order_created", order_id=order.id, item_count=len(order_items))
    return Created(order)


def _replayed(record: IdempotentRecord[Order], idempotency_key: str, request_fingerprint: str) -> Created[Order]:
    created = replay(record, idempotency_key, request_fingerprint)
    structlog.contextvars.bind_contextvars(order_id=created.entity.id)
    logger.info("order_create_replayed", order_id=created.entity.id)
    return created
