from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class OrderItem:
    sku: str
    quantity: int
    unit_price: Decimal


@dataclass(frozen=True)
class Order:
    id: int | None
    user_id: int
    items: tuple[OrderItem, ...]
    total: Decimal
    created_at: datetime
