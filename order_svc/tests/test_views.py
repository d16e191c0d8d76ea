"""The order API through Django's test client, with a real scripted HTTP server as the user service."""

import time

import pytest

from tests.factories import order_body
from testsupport.scripted_server import respond


def test_create_order_returns_computed_total(api, existing_user):
    response = api.post("/orders", order_body(items=[
        {"sku": "A", "quantity": 3, "unit_price": "0.10"},
        {"sku": "B", "quantity": 1, "unit_price": "0.20"},
    ]), format="json")
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


@pytest.mark.parametrize("body,content_type,status", [
    ("{oops", "application/json", 400),
    ("[]", "application/json", 400),
    ('"x"', "application/json", 400),
    ('{"user_id": "one", "items": {}}', "application/json", 400),
    ("user_id=1", "application/x-www-form-urlencoded", 415),
])
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
    assert set(document["paths"]) == {"/orders/", "/orders/{id}/"}
    parameters = {p["name"] for p in document["paths"]["/orders/"]["get"]["parameters"]}
    assert {"user_id", "page", "page_size"} <= parameters
