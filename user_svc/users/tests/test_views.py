"""The user API through Django's test client: status codes, bodies and headers a client sees."""

from urllib.parse import urlsplit

import pytest


def test_create_returns_201_with_location_and_trimmed_name(api):
    response = api.post("/users", {"name": "  Ada ", "email": "ada@example.com"}, format="json")
    assert response.status_code == 201
    assert response.json() == {"id": 1, "name": "Ada", "email": "ada@example.com"}
    assert response["Location"] == "/users/1"


@pytest.mark.parametrize("path", ["/users/1", "/users/1/"])
def test_retrieve_with_and_without_trailing_slash(api, make_user, path):
    user = make_user()
    response = api.get(path)
    assert response.status_code == 200
    assert response.json() == user


@pytest.mark.parametrize("path", ["/users", "/users/"])
def test_post_is_never_redirected(api, path):
    response = api.post(path, {"name": "Ada", "email": "ada@example.com"}, format="json")
    assert response.status_code == 201


def test_unknown_user_is_404_json(api):
    response = api.get("/users/999")
    assert response.status_code == 404
    assert response.json() == {"detail": "User 999 not found"}


@pytest.mark.parametrize("path", ["/users/abc", "/users/-1", "/nowhere"])
def test_unmatched_paths_are_404_json(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "detail" in response.json()


def test_duplicate_email_is_409_with_detail(api, make_user):
    make_user(email="ada@example.com")
    response = api.post("/users", {"name": "Again", "email": "ADA@Example.com"}, format="json")
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_list_is_paginated(api, make_user):
    for _ in range(25):
        make_user()
    first = api.get("/users").json()
    assert first["count"] == 25
    assert len(first["results"]) == 20
    assert first["previous"] is None
    assert first["next"].endswith("/users?page=2")
    second = api.get("/users?page=2").json()
    assert [u["id"] for u in second["results"]] == list(range(21, 26))
    assert second["next"] is None
    assert api.get("/users?page_size=5").json()["results"][-1]["id"] == 5


@pytest.mark.parametrize("asked", ["101", "1000", "100000000"])
def test_page_size_is_capped_at_100(api, make_user, asked):
    for _ in range(101):
        make_user()
    page = api.get(f"/users?page_size={asked}").json()
    assert (page["count"], len(page["results"])) == (101, 100)
    assert page["next"].endswith(f"/users?page=2&page_size={asked}")


def test_page_beyond_the_end_is_404_json(api):
    response = api.get("/users?page=7")
    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid page."}


BAD_BODIES = [
    ("{not json", "application/json", 400),
    ("[1, 2]", "application/json", 400),
    ('"a string"', "application/json", 400),
    ("null", "application/json", 400),
    ('{"name": 5, "email": true}', "application/json", 400),
    ("name=Ada", "application/x-www-form-urlencoded", 415),
    ("<user/>", "application/xml", 415),
    ("", "application/json", 400),
]


@pytest.mark.parametrize(("body", "content_type", "status"), BAD_BODIES)
def test_bad_bodies_get_4xx_json(api, body, content_type, status):
    response = api.generic("POST", "/users", body, content_type=content_type)
    assert response.status_code == status
    assert isinstance(response.json(), dict)
    assert api.get("/users").json()["count"] == 0


def test_body_over_one_mebibyte_is_413(api):
    body = '{"name": "' + "x" * (1024 * 1024) + '", "email": "a@example.com"}'
    response = api.generic("POST", "/users", body, content_type="application/json")
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_browsable_api_answers_html(api, make_user):
    make_user()
    response = api.get("/users", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"User List" in response.content


def test_openapi_schema_and_swagger_ui(api):
    schema = api.get("/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/users", "/users/{id}"}
    assert set(document["paths"]["/users"]) == {"get", "post"}
    docs = api.get("/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


def test_the_schema_names_the_paths_the_api_links_to(api, make_user):
    """A client generated from the schema calls the paths that Location and the pagination links name."""
    document = api.get("/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    make_user()
    created = api.post("/users", {"name": "Ada", "email": "ada@example.com"}, format="json")
    assert document["paths"]["/users/{id}"] and "/users/{id}".replace("{id}", "2") == created["Location"]
    next_link = api.get("/users?page_size=1").json()["next"]
    assert next_link == "http://testserver/users?page=2&page_size=1"
    assert urlsplit(next_link).path in document["paths"]


def test_health_and_readiness(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ok"}


def test_metrics_exposes_user_counter(api, make_user):
    make_user()
    body = api.get("/metrics").content.decode()
    assert "users_created_total" in body
    assert 'app_build_info{env="local",service="user-svc",version="0.1.0"} 1.0' in body


def test_favicon_requests_get_an_empty_answer_not_a_404(api):
    response = api.get("/favicon.ico")
    assert response.status_code == 204
    assert response.content == b""


# Idempotency-Key.


def post_user(api, body, key=None):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return api.post("/users", body, format="json", **headers)


ADA = {"name": "Ada", "email": "ada@example.com"}


def test_idempotency_key_replays_the_first_answer(api):
    first = post_user(api, ADA, key="3f1c-retry")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    again = post_user(api, {"name": "  Ada ", "email": "ada@example.com"}, key="3f1c-retry")  # same once validated
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() == {"id": 1, **ADA}
    assert again["Location"] == first["Location"] == "/users/1"
    assert api.get("/users").json()["count"] == 1


def test_without_a_key_a_retry_is_still_a_conflict(api):
    post_user(api, ADA, key="k")
    assert post_user(api, ADA).status_code == 409
    assert post_user(api, ADA, key="another").status_code == 409


def test_idempotency_key_with_a_different_body_is_422(api):
    post_user(api, ADA, key="k-1")
    response = post_user(api, {"name": "Ada", "email": "ada2@example.com"}, key="k-1")
    assert response.status_code == 422
    assert response.json() == {
        "detail": 'Idempotency-Key "k-1" was used with a different request; send a new key for a new request.'
    }
    assert "Idempotent-Replayed" not in response
    assert api.get("/users").json()["count"] == 1


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "1 to 255 characters"),
        ("x" * 256, "1 to 255 characters"),
        ("caf\u00e9", "printable ASCII"),
        ("tab\there", "printable ASCII"),
        (" leading", "printable ASCII"),
    ],
)
def test_malformed_idempotency_key_is_400_and_stores_nothing(api, key, problem):
    response = post_user(api, ADA, key=key)
    assert response.status_code == 400
    assert problem in response.json()["Idempotency-Key"][0]
    assert api.get("/users").json()["count"] == 0


@pytest.mark.parametrize("key", ["a", "x" * 255, "550e8400-e29b-41d4-a716-446655440000", "with inner space ~!"])
def test_well_formed_idempotency_keys_are_accepted(api, key):
    assert post_user(api, ADA, key=key).status_code == 201
    assert post_user(api, ADA, key=key)["Idempotent-Replayed"] == "true"


def test_schema_documents_the_idempotency_headers_and_422(api):
    document = api.get("/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    create = document["paths"]["/users"]["post"]
    (header,) = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["in"] == "header" and not header.get("required", False)
    assert header["schema"]["maxLength"] == 255
    assert create["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert create["responses"]["201"]["headers"]["Idempotent-Replayed"]["schema"] == {
        "type": "string",
        "enum": ["true"],
    }
    assert "Idempotency-Key" not in {p["name"] for p in document["paths"]["/users"]["get"]["parameters"]}


def test_ids_no_user_can_have_are_404_not_500(api):
    """Past 64 bits no id exists; past 4300 digits int() itself refuses the string."""
    for digits in ("9223372036854775808", "9" * 5000):
        response = api.get(f"/users/{digits}")
        assert response.status_code == 404, digits[:30]
        assert response.json()["detail"].startswith("User ")


def test_json_nested_past_the_recursion_limit_is_a_400(api):
    response = api.generic("POST", "/users", b"[" * 100_000 + b"]" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"detail": "JSON parse error - the document is nested too deeply."}


@pytest.mark.parametrize(
    ("accept", "query", "content_type"),
    [
        ("*/*", "", "application/json"),
        ("application/json", "", "application/json"),
        ("application/json; indent=4", "", "application/json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "", "text/html"),  # what a browser sends
        ("*/*", "format=api", "text/html"),
        ("*/*", "format=json", "application/json"),
    ],
)
def test_content_negotiation_json_for_api_clients_and_html_for_browsers(api, make_user, accept, query, content_type):
    user = make_user()
    response = api.get(f"/users/{user['id']}" + (f"?{query}" if query else ""), HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    if content_type == "application/json":
        assert response.json() == user
    if "indent=4" in accept:
        assert b'\n    "id"' in response.content  # DRF's negotiation kept the indent parameter


def test_an_unacceptable_accept_header_is_still_406(api, make_user):
    user = make_user()
    response = api.get(f"/users/{user['id']}", HTTP_ACCEPT="image/png")
    assert response.status_code == 406
    assert "detail" in response.json()
