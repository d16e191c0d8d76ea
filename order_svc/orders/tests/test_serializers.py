from decimal import Decimal

import pytest

from orders.serializers import OrderInputSerializer


def item(**overrides):
    return {"sku": "SKU", "quantity": 1, "unit_price": "1.00", **overrides}


def errors_for(data):
    serializer = OrderInputSerializer(data=data)
    assert not serializer.is_valid()
    return serializer.errors


def test_valid_order():
    serializer = OrderInputSerializer(data={"user_id": 3, "items": [item(), item(sku="x" * 64, quantity=10_000)]})
    assert serializer.is_valid(), serializer.errors


@pytest.mark.parametrize("quantity", [0, -1, 10_001, 1.5, "many", None, True])
def test_quantity_must_be_integer_from_1_to_10000(quantity):
    assert "items" in errors_for({"user_id": 1, "items": [item(quantity=quantity)]})


@pytest.mark.parametrize("price", ["-0.01", "1.005", "abc", "NaN", "Infinity", None, "10000000000.00"])
def test_unit_price_is_non_negative_with_two_places(price):
    assert "items" in errors_for({"user_id": 1, "items": [item(unit_price=price)]})


@pytest.mark.parametrize("price", ["0", "0.00", 0, "9999999999.99", 19.99])
def test_acceptable_prices(price):
    assert OrderInputSerializer(data={"user_id": 1, "items": [item(unit_price=price)]}).is_valid()


@pytest.mark.parametrize("sku", ["", "x" * 65, None, 7.5])
def test_sku_is_1_to_64_characters(sku):
    assert "items" in errors_for({"user_id": 1, "items": [item(sku=sku)]})


@pytest.mark.parametrize("items", [[], [item()] * 101, "items", None, {"sku": "a"}])
def test_items_must_be_a_list_of_1_to_100(items):
    assert "items" in errors_for({"user_id": 1, "items": items})


def test_one_hundred_items_are_fine():
    assert OrderInputSerializer(data={"user_id": 1, "items": [item()] * 100}).is_valid()


@pytest.mark.parametrize("user_id", [0, -4, "abc", None, 2**63])
def test_user_id_must_be_positive_integer(user_id):
    assert "user_id" in errors_for({"user_id": user_id, "items": [item()]})


def test_output_goes_through_fields_built_once_and_says_what_drf_would_say(monkeypatch):
    import datetime
    import decimal
    from types import SimpleNamespace

    from rest_framework import serializers
    from rest_framework.fields import Field

    from orders.serializers import OrderOutputSerializer

    order = SimpleNamespace(
        id=7,
        user_id=3,
        items=[SimpleNamespace(sku="A", quantity=2, unit_price=decimal.Decimal("1.50"))],
        total=decimal.Decimal("3.00"),
        created_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    )
    plain = serializers.Serializer.to_representation(OrderOutputSerializer(), order)  # DRF's own, fields per instance
    assert OrderOutputSerializer(order).data == plain  # the class's fields are built on first use

    copied = []
    original = Field.__deepcopy__
    monkeypatch.setattr(Field, "__deepcopy__", lambda field, memo: copied.append(field) or original(field, memo))
    assert OrderOutputSerializer(order).data == plain
    assert OrderOutputSerializer([order, order], many=True).data == [plain, plain]
    assert copied == [], "fields were built again for a response"
    assert plain["items"] == [{"sku": "A", "quantity": 2, "unit_price": "1.50"}] and plain["total"] == "3.00"


@pytest.mark.parametrize(
    "data",
    [
        {"user_id": 3, "items": [item(), item(sku="B", quantity=2, unit_price="0.50")], "total": "2.00"},
        {"user_id": 3, "items": [item(quantity=0), item(unit_price="x")], "total": "-1"},
        {"user_id": "abc", "items": "items"},
        {"items": [item(sku="")]},
        ["not", "an", "object"],
    ],
)
def test_validation_goes_through_fields_built_once_and_says_what_drf_would_say(monkeypatch, data):
    from rest_framework import serializers
    from rest_framework.exceptions import ValidationError
    from rest_framework.fields import Field

    def drf_own(data):  # DRF's validation, with fields built for this serializer
        serializer = OrderInputSerializer()
        try:
            value = serializers.Serializer.to_internal_value(serializer, data)
            serializers.Serializer.run_validators(serializer, value)
        except ValidationError as exc:
            return None, exc.detail
        return value, {}

    OrderInputSerializer(data=data).is_valid()  # the class's fields are built on first use
    expected_value, expected_errors = drf_own(data)

    copied = []
    original = Field.__deepcopy__
    monkeypatch.setattr(Field, "__deepcopy__", lambda field, memo: copied.append(field) or original(field, memo))
    serializer = OrderInputSerializer(data=data)
    assert serializer.is_valid() == (not expected_errors)
    assert copied == [], "fields were built again for a request"
    if expected_errors:
        assert serializer.errors == expected_errors
    else:
        assert serializer.validated_data == expected_value


def test_partial_validation_keeps_drfs_own_fields():
    """Fields read ``partial`` from their root: a partial serializer cannot share the class's fields."""
    serializer = OrderInputSerializer(data={"total": "1.00"}, partial=True)
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data == {"total": Decimal("1.00")}
    assert not OrderInputSerializer(data={"total": "1.00"}).is_valid()
