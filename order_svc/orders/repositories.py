"""The order service's storage rules and its in-memory backend; ``settings.REPOSITORY_CLASS`` picks the
backend (see ``svc_common.storage.repository.get_repository``)."""

from typing import ClassVar

from orders.entities import Order
from svc_common.storage.repository import InMemoryRepository


class OrderStorageRules:
    """What every order backend offers, declared once so that the backends cannot drift apart."""

    indexed_fields: ClassVar[tuple[str, ...]] = ("user_id",)  # GET /orders?user_id=


class InMemoryOrderRepository(OrderStorageRules, InMemoryRepository[Order]):
    pass
