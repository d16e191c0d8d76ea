"""Tables of the order service (``REPOSITORY_BACKEND=postgres``); ``orders.postgres_repository`` maps them to
``orders.entities.Order``, which is what the rest of the service sees."""

from django.db import models

from orders.entities import DECIMAL_PLACES, PRICE_DIGITS, TOTAL_DIGITS
from svc_common.storage.postgres_repository import IdempotencyKeyRow


class OrderRow(models.Model):
    id = models.BigAutoField(primary_key=True)
    # The user service's id: another database, so no foreign key (the service checks it on create).
    user_id = models.BigIntegerField()
    total = models.DecimalField(max_digits=TOTAL_DIGITS, decimal_places=DECIMAL_PLACES)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "orders"
        # GET /orders?user_id= counts and pages one user's orders in id order from this index alone.
        indexes = [models.Index(fields=["user_id", "id"], name="orders_user_id_id")]

    def __str__(self) -> str:
        return f"order {self.id}"


class OrderItemRow(models.Model):
    id = models.BigAutoField(primary_key=True)
    # The unique constraint below indexes order_id already.
    order = models.ForeignKey(OrderRow, on_delete=models.CASCADE, related_name="items", db_index=False)
    position = models.PositiveSmallIntegerField()  # items come back in the order they were sent
    sku = models.CharField(max_length=64)
    quantity = models.IntegerField()
    unit_price = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=DECIMAL_PLACES)

    class Meta:
        db_table = "order_items"
        constraints = [models.UniqueConstraint(fields=["order", "position"], name="order_items_order_position")]

    def __str__(self) -> str:
        return f"item {self.position} of order {self.order.pk}"


class OrderIdempotencyKey(IdempotencyKeyRow):
    entity = models.ForeignKey(OrderRow, on_delete=models.CASCADE, related_name="+")

    class Meta(IdempotencyKeyRow.Meta):
        db_table = "orders_idempotency_keys"
