def order_body(user_id=1, **overrides):
    """A valid POST /orders body; override any field."""
    body = {"user_id": user_id, "items": [{"sku": "BOOK-1", "quantity": 2, "unit_price": "12.50"}]}
    body.update(overrides)
    return body
