from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

# Money: a price has at most 12 digits, 2 after the point; 100 items x 10,000 x the largest price
# always fits a total's 20 digits. The API (serializers) and the database (models) both hold to it.
PRICE_DIGITS, TOTAL_DIGITS, DECIMAL_PLACES = 12, 20, 2


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
