from typing import Any

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from orders.entities import DECIMAL_PLACES, PRICE_DIGITS, TOTAL_DIGITS
from svc_common.api.fields import StrictCharField
from svc_common.api.serializers import FieldsOnceSerializer
from svc_common.storage.repository import MAX_ENTITY_ID


class OrderItemSerializer(FieldsOnceSerializer[Any]):
    sku = StrictCharField(min_length=1, max_length=64)
    quantity = serializers.IntegerField(min_value=1, max_value=10_000)
    unit_price = serializers.DecimalField(max_digits=PRICE_DIGITS, decimal_places=DECIMAL_PLACES, min_value=0)


@extend_schema_serializer(component_name="NewOrder")
class OrderInputSerializer(FieldsOnceSerializer[Any]):
    """POST /orders: the total is optional; when sent, it must be the sum of the items."""

    user_id = serializers.IntegerField(min_value=1, max_value=MAX_ENTITY_ID)
    items: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=OrderItemSerializer(), min_length=1, max_length=100
    )
    total = serializers.DecimalField(
        max_digits=TOTAL_DIGITS, decimal_places=DECIMAL_PLACES, min_value=0, required=False, allow_null=True
    )


@extend_schema_serializer(component_name="Order")
class OrderOutputSerializer(FieldsOnceSerializer[Any]):
    """An order as the API answers it: every field is always there."""

    id = serializers.IntegerField()
    user_id = serializers.IntegerField()
    items = OrderItemSerializer(many=True)
    total = serializers.DecimalField(max_digits=TOTAL_DIGITS, decimal_places=DECIMAL_PLACES)
    created_at = serializers.DateTimeField()


class OrderListQuerySerializer(serializers.Serializer[Any]):
    user_id = serializers.IntegerField(min_value=1, max_value=MAX_ENTITY_ID, required=False)
