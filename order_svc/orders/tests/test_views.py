"""The order API through Django's test client, with a real scripted HTTP server as the user service."""

import time

import pytest

from orders.tests.factories import order_body
from testsupport.scripted_server import respond


def test_create_order_returns_computed_total(api, existing_user):
    response = api.post(
        "/orders",
        order_body(
            items=[
                {"sku": "A", "quantity": 3, "unit_price": "0.10"},
                {"sku": "B", "quantity": 1, "unit_price": "0.20"},
            ]
        ),
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["total"] == "0.50"
    assert body["items"][0] == {"sku": "A", "quantity": 3, "unit_price": "0.10"}
    assert set(body) == {"id", "user_id", "items", "total", "created_at"}
    assert response["Location"] == f"/orders/{body['id']}"
    assert existing_user.requests[0].path == "/users/1"


@pytest.mark.parametrize("path", ["/orders/1", "/orders/1/"])
def test_read_back_with_and_without_slash(api, existing_user, path):
    created = api.post("/orders", order_body(), format="json").json()
    assert api.get(path).json() == created


def test_wrong_total_is_400_and_stores_nothing(api, existing_user):
    response = api.post("/orders", order_body(total="99.99"), format="json")
    assert response.status_code == 400
    assert "total" in response.json()
    assert api.get("/orders").json()["count"] == 0


def test_unknown_user_is_404_and_stores_nothing(api, user_service):
    user_service(respond(404, {"detail": "User 5 not found"}))
    response = api.post("/orders", order_body(user_id=5), format="json")
    assert response.status_code == 404
    assert response.json() == {"detail": "User 5 not found"}
    assert api.get("/orders").json()["count"] == 0


def test_user_service_failing_is_503_and_stores_nothing(api, user_service, settings):
    settings.USER_SVC_DEADLINE = 1.0
    server = user_service(respond(503))
    started = time.monotonic()
    response = api.post("/orders", order_body(), format="json")
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]
    assert len(server.requests) == 3
    assert api.get("/orders").json()["count"] == 0


def test_list_filters_by_user(api, existing_user):
    for user_id in (1, 2, 1):
        api.post("/orders", order_body(user_id=user_id), format="json")
    page = api.get("/orders?user_id=1").json()
    assert page["count"] == 2
    assert {o["user_id"] for o in page["results"]} == {1}
    assert api.get("/orders").json()["count"] == 3
    assert api.get("/orders?user_id=42").json()["count"] == 0


@pytest.mark.parametrize("query", ["user_id=abc", "user_id=0", "user_id=-3"])
def test_bad_user_filter_is_400(api, query):
    response = api.get(f"/orders?{query}")
    assert response.status_code == 400
    assert "user_id" in response.json()


def test_unknown_order_is_404(api):
    response = api.get("/orders/12")
    assert response.status_code == 404
    assert response.json() == {"detail": "Order 12 not found"}


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("{oops", "application/json", 400),
        ("[]", "application/json", 400),
        ('"x"', "application/json", 400),
        ('{"user_id": "one", "items": {}}', "application/json", 400),
        ("user_id=1", "application/x-www-form-urlencoded", 415),
    ],
)
def test_bad_bodies_get_4xx_json_without_calling_the_user_service(api, existing_user, body, content_type, status):
    response = api.generic("POST", "/orders", body, content_type=content_type)
    assert response.status_code == status
    assert isinstance(response.json(), dict)
    assert existing_user.requests == []


def test_body_over_one_mebibyte_is_413(api):
    body = '{"user_id": 1, "items": [], "pad": "' + "x" * (1024 * 1024) + '"}'
    assert api.generic("POST", "/orders", body, content_type="application/json").status_code == 413


def test_schema_lists_order_routes(api):
    document = api.get("/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert set(document["paths"]) == {"/orders", "/orders/{id}"}
    parameters = {p["name"] for p in document["paths"]["/orders"]["get"]["parameters"]}
    assert {"user_id", "page", "page_size"} <= parameters


def test_schema_states_what_every_order_response_carries(api):
    """Responses always carry every field, total included; only the request may leave total out."""
    document = api.get("/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    schemas = document["components"]["schemas"]
    order = schemas["Order"]
    assert set(order["required"]) == {"id", "user_id", "items", "total", "created_at"} == set(order["properties"])
    assert not any(field.get("nullable") for field in order["properties"].values())
    new_order = schemas["NewOrderRequest"]
    assert set(new_order["required"]) == {"user_id", "items"}
    assert new_order["properties"]["total"]["nullable"] is True
    post = document["paths"]["/orders"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/NewOrderRequest")
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/Order")
    page = schemas["PaginatedOrderList"]["properties"]["results"]["items"]["$ref"]
    assert page.endswith("/Order")


# Idempotency-Key.


def post_order(api, body, key=None):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return api.post("/orders", body, format="json", **headers)


def test_idempotency_key_replays_the_first_order_without_a_second_user_check(api, existing_user):
    first = post_order(api, order_body(), key="order-7f2a")
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first
    again = post_order(
        api, order_body(items=[{"sku": "BOOK-1", "quantity": 2, "unit_price": "12.5"}]), key="order-7f2a"
    )  # the same once validated
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # created_at included: the stored order, not a new one
    assert again["Location"] == first["Location"] == f"/orders/{first.json()['id']}"
    assert api.get("/orders").json()["count"] == 1
    assert len(existing_user.requests) == 1


def test_replay_needs_no_user_service_at_all(api, user_service, settings):
    settings.USER_SVC_DEADLINE = 1.0
    server = user_service(respond(200, {"id": 1}))
    first = post_order(api, order_body(), key="k")
    server.steps[:] = [respond(503)]  # the user service goes down
    again = post_order(api, order_body(), key="k")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert len(server.requests) == 1


def test_idempotency_key_with_a_different_body_is_422_and_stores_nothing(api, existing_user):
    post_order(api, order_body(), key="k-1")
    response = post_order(api, order_body(user_id=2), key="k-1")
    assert response.status_code == 422
    assert response.json() == {
        "detail": 'Idempotency-Key "k-1" was used with a different request; send a new key for a new request.'
    }
    assert api.get("/orders").json()["count"] == 1


def test_without_a_key_a_retry_is_a_second_order(api, existing_user):
    post_order(api, order_body())
    post_order(api, order_body())
    assert api.get("/orders").json()["count"] == 2


@pytest.mark.parametrize("key", ["", "k" * 256, "\u00fcber", "new\x7fline"])
def test_malformed_idempotency_key_is_400_without_calling_the_user_service(api, existing_user, key):
    response = post_order(api, order_body(), key=key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()
    assert existing_user.requests == []


def test_a_failed_order_does_not_keep_its_key(api, user_service):
    server = user_service(respond(404, {"detail": "User 1 not found"}))
    assert post_order(api, order_body(), key="k").status_code == 404
    server.steps[:] = [respond(200, {"id": 1})]
    retried = post_order(api, order_body(), key="k")
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried


def test_schema_documents_the_idempotency_header_on_create_only(api):
    document = api.get("/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    create = document["paths"]["/orders"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in create["parameters"] if p["in"] == "header"}
    assert "422" in create["responses"]
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]
    assert "Idempotency-Key" not in {p["name"] for p in document["paths"]["/orders"]["get"]["parameters"]}
