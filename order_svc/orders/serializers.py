from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from svc_common.fields import StrictCharField

# 100 items x 10,000 x the largest price (12 digits) always fits the total's 20 digits.
PRICE = {"max_digits": 12, "decimal_places": 2}
TOTAL = {"max_digits": 20, "decimal_places": 2}


class OrderItemSerializer(serializers.Serializer):
    sku = StrictCharField(min_length=1, max_length=64)
    quantity = serializers.IntegerField(min_value=1, max_value=10_000)
    unit_price = serializers.DecimalField(**PRICE, min_value=0)


@extend_schema_serializer(component_name="NewOrder")
class OrderInputSerializer(serializers.Serializer):
    """POST /orders: the total is optional; when sent, it must be the sum of the items."""

    user_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    items = OrderItemSerializer(many=True, min_length=1, max_length=100)
    total = serializers.DecimalField(**TOTAL, min_value=0, required=False, allow_null=True)


@extend_schema_serializer(component_name="Order")
class OrderOutputSerializer(serializers.Serializer):
    """An order as the API answers it: every field is always there."""

    id = serializers.IntegerField()
    user_id = serializers.IntegerField()
    items = OrderItemSerializer(many=True)
    total = serializers.DecimalField(**TOTAL)
    created_at = serializers.DateTimeField()


class OrderListQuerySerializer(serializers.Serializer):
    user_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
