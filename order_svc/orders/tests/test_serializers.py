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
