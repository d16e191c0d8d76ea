"""Where orders are stored; the backend is chosen by ``REPOSITORY_BACKEND``."""

from functools import cache

from django.conf import settings

from orders.entities import Order
from svc_common.repository import InMemoryRepository, Repository


class OrderStorageRules:
    """What every order backend offers, declared once so memory and Redis cannot drift apart."""

    indexed_fields = ("user_id",)  # GET /orders?user_id=


class InMemoryOrderRepository(OrderStorageRules, InMemoryRepository[Order]):
    pass


@cache
def get_order_repository() -> Repository[Order]:
    if settings.REPOSITORY_BACKEND == "redis":
        from orders.redis_repository import RedisOrderRepository

        return RedisOrderRepository.from_settings()
    return InMemoryOrderRepository()
