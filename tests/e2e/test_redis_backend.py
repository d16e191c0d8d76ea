"""Both services on REPOSITORY_BACKEND=redis: several instances with several gunicorn workers each,
sharing one real redis-server; and what clients see when Redis goes away (503 JSON, never 500)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from testsupport.observability import access_lines
from testsupport.redis_server import redis_server_binary, start_redis

THREADS = 32
CREATES = 200
LATENCY_LIMIT = 3.0  # seconds any request may take while Redis is down or hung


@pytest.fixture
def redis_server(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


_sessions = threading.local()
_open_sessions: list[requests.Session] = []


def http() -> requests.Session:
    """One keep-alive session per thread (a Session is not meant to be shared between threads)."""
    if not hasattr(_sessions, "session"):
        _sessions.session = requests.Session()
        _open_sessions.append(_sessions.session)
    return _sessions.session


def close_sessions() -> None:
    """Idle keep-alive connections hold up gunicorn's graceful stop by ~2 s per instance."""
    global _sessions
    _sessions = threading.local()  # so no thread goes on with a closed, untracked session
    while _open_sessions:
        _open_sessions.pop().close()


@pytest.fixture(autouse=True)
def _close_sessions_before_services_stop(start):
    yield
    close_sessions()


def redis_env(server, db=0, **extra):
    return {"REPOSITORY_BACKEND": "redis", "REDIS_URL": server.url(db), "GUNICORN_WORKERS": 2, **extra}


def create_user(base_url, n, email=None):
    return http().post(
        f"{base_url}/users", json={"name": f"User {n}", "email": email or f"user{n}@example.com"}, timeout=10
    )


def all_pages(base_url, path, **params):
    """Every entity of a listing, by following page numbers, plus the reported count."""
    items, page, count = [], 1, None
    while True:
        response = http().get(f"{base_url}{path}", params={**params, "page": page, "page_size": 100}, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        count = body["count"]
        items += body["results"]
        if not body["next"]:
            return count, items
        page += 1


def access_records(service) -> list[dict]:
    return access_lines(service.log_records())


def assert_two_workers_served(service, method, path):
    """The instance really runs two worker processes, and both of them handled these requests."""
    booted = [r for r in service.log_records() if str(r.get("event", "")).startswith("Booting worker")]
    assert len(booted) == 2, booted
    pids = {r["pid"] for r in access_records(service) if r["method"] == method and r["path"] == path}
    assert len(pids) == 2, f"{service.name} on {service.url}: {method} {path} served by pids {pids}"


def test_redis_server_is_installed():
    assert redis_server_binary()


def test_two_user_instances_hand_out_distinct_ids_with_read_your_writes(start, redis_server):
    a = start("user-svc", **redis_env(redis_server))
    b = start("user-svc", **redis_env(redis_server))

    def create_then_read_elsewhere(n):
        writer, reader = (a, b) if n % 2 else (b, a)
        created = create_user(writer.url, n)
        assert created.status_code == 201, created.text
        body = created.json()
        assert created.headers["Location"] == f"/users/{body['id']}"
        seen = http().get(f"{reader.url}/users/{body['id']}", timeout=10)
        assert seen.status_code == 200, f"user {body['id']} made on {writer.url} not yet on {reader.url}"
        assert seen.json() == body
        return body

    with ThreadPoolExecutor(THREADS) as pool:
        created = list(pool.map(create_then_read_elsewhere, range(CREATES)))

    ids = [user["id"] for user in created]
    assert len(set(ids)) == CREATES
    assert sorted(ids) == list(range(1, CREATES + 1))
    for instance in (a, b):
        count, listed = all_pages(instance.url, "/users")
        assert count == CREATES
        assert listed == sorted(created, key=lambda user: user["id"])
        assert_two_workers_served(instance, "POST", "/users")


def test_racing_duplicate_emails_across_instances_give_one_201_and_the_rest_409(start, redis_server):
    a = start("user-svc", **redis_env(redis_server))
    b = start("user-svc", **redis_env(redis_server))
    variants = ["dup@example.com", "DUP@example.com", "Dup@Example.Com", "dup@EXAMPLE.COM", "dUp@eXample.com"]
    racers = 20
    barrier = threading.Barrier(racers)

    def race(n):
        http().get(f"{(a, b)[n % 2].url}/healthz", timeout=10)  # open the connection before the start line
        barrier.wait()
        return create_user((a, b)[n % 2].url, n, email=variants[n % len(variants)])

    with ThreadPoolExecutor(racers) as pool:
        responses = list(pool.map(race, range(racers)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * (racers - 1), statuses
    for response in responses:
        assert response.headers["Content-Type"] == "application/json"
        if response.status_code == 409:
            assert "email" in response.json()["detail"]
    for instance in (a, b):
        count, listed = all_pages(instance.url, "/users")
        assert count == 1 and len(listed) == 1


def test_two_order_instances_hand_out_distinct_ids_with_read_your_writes(start, redis_server):
    users = start("user-svc", **redis_env(redis_server, db=0))
    a = start("order-svc", **redis_env(redis_server, db=1, USER_SVC_URL=users.url))
    b = start("order-svc", **redis_env(redis_server, db=1, USER_SVC_URL=users.url))
    user_ids = [create_user(users.url, n).json()["id"] for n in range(5)]

    def order_then_read_elsewhere(n):
        writer, reader = (a, b) if n % 2 else (b, a)
        payload = {
            "user_id": user_ids[n % 5],
            "items": [
                {"sku": f"SKU-{n}", "quantity": 1 + n % 3, "unit_price": "19.99"},
                {"sku": "GIFT", "quantity": 1, "unit_price": "0.10"},
            ],
        }
        created = http().post(f"{writer.url}/orders", json=payload, timeout=10)
        assert created.status_code == 201, created.text
        body = created.json()
        assert Decimal(body["total"]) == (1 + n % 3) * Decimal("19.99") + Decimal("0.10")
        seen = http().get(f"{reader.url}/orders/{body['id']}", timeout=10)
        assert seen.status_code == 200, f"order {body['id']} made on {writer.url} not yet on {reader.url}"
        assert seen.json() == body  # totals, prices and created_at come back exactly
        return body

    with ThreadPoolExecutor(THREADS) as pool:
        created = list(pool.map(order_then_read_elsewhere, range(CREATES)))

    assert sorted(order["id"] for order in created) == list(range(1, CREATES + 1))
    count, listed = all_pages(b.url, "/orders")
    assert count == CREATES and listed == sorted(created, key=lambda order: order["id"])
    for instance in (a, b):
        assert_two_workers_served(instance, "POST", "/orders")
    for user_id in user_ids:
        mine = sorted((o for o in created if o["user_id"] == user_id), key=lambda order: order["id"])
        count, listed = all_pages(a.url, "/orders", user_id=user_id)
        assert count == len(mine) == CREATES // 5
        assert listed == mine

    # An order for a user who does not exist is refused and stores nothing.
    missing = http().post(
        f"{a.url}/orders",
        timeout=10,
        json={"user_id": 999_999, "items": [{"sku": "X", "quantity": 1, "unit_price": "1.00"}]},
    )
    assert missing.status_code == 404
    assert all_pages(b.url, "/orders")[0] == CREATES


def test_restarting_an_instance_loses_nothing(start, redis_server):
    a = start("user-svc", **redis_env(redis_server))
    b = start("user-svc", **redis_env(redis_server))
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda n: create_user((a, b)[n % 2].url, n).json(), range(30)))
    close_sessions()
    a.stop()
    c = start("user-svc", **redis_env(redis_server))

    for user in created:
        response = http().get(f"{c.url}/users/{user['id']}", timeout=10)
        assert response.status_code == 200 and response.json() == user
    count, listed = all_pages(c.url, "/users")
    assert count == 30 and [user["id"] for user in listed] == list(range(1, 31))
    page = http().get(f"{c.url}/users", params={"page": 2, "page_size": 20}, timeout=10).json()
    assert page["count"] == 30 and [user["id"] for user in page["results"]] == list(range(21, 31))
    assert create_user(c.url, 31).json()["id"] == 31
    assert create_user(b.url, 32).json()["id"] == 32
    assert create_user(c.url, 99, email="USER1@example.com").status_code == 409  # uniqueness survived too


def assert_503_json(method, url, **kwargs):
    started = time.monotonic()
    response = http().request(method, url, timeout=LATENCY_LIMIT + 2, **kwargs)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, f"{method} {url}: {response.status_code} {response.text[:300]}"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["detail"]
    assert elapsed < LATENCY_LIMIT, f"{method} {url} took {elapsed:.2f}s"
    return response


def storage_calls(base_url, kind):
    """Every request that must touch storage: create, list, filtered list, detail, readiness."""
    if kind == "users":
        return [
            ("POST", f"{base_url}/users", {"json": {"name": "Down", "email": f"down-{time.monotonic_ns()}@x.io"}}),
            ("GET", f"{base_url}/users", {}),
            ("GET", f"{base_url}/users/1", {}),
            ("GET", f"{base_url}/readyz", {}),
        ]
    return [
        (
            "POST",
            f"{base_url}/orders",
            {"json": {"user_id": 1, "items": [{"sku": "X", "quantity": 1, "unit_price": "1.00"}]}},
        ),
        ("GET", f"{base_url}/orders", {}),
        ("GET", f"{base_url}/orders", {"params": {"user_id": 1}}),
        ("GET", f"{base_url}/orders/1", {}),
        ("GET", f"{base_url}/readyz", {}),
    ]


def wait_until_ready(base_url, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        response = http().get(f"{base_url}/readyz", timeout=LATENCY_LIMIT)
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, f"{base_url} not ready again within {timeout}s"
        time.sleep(0.1)


def test_redis_down_or_hung_gives_503_json_quickly_and_recovers(start, tmp_path):
    # Separate servers, so the order service's own storage can fail while the user check still works.
    user_redis = start_redis(tmp_path / "user-redis")
    order_redis = start_redis(tmp_path / "order-redis")
    try:
        users = start("user-svc", **redis_env(user_redis))
        orders = start("order-svc", **redis_env(order_redis, USER_SVC_URL=users.url))
        user = create_user(users.url, 1).json()
        order = (
            http()
            .post(
                f"{orders.url}/orders",
                timeout=10,
                json={"user_id": user["id"], "items": [{"sku": "X", "quantity": 2, "unit_price": "1.25"}]},
            )
            .json()
        )

        # Down: connections refused. The order service fails on its own storage (the user check passes).
        order_redis.stop()
        for method, url, kwargs in storage_calls(orders.url, "orders"):
            response = assert_503_json(method, url, **kwargs)
            if url.endswith("/orders") and method == "POST":
                assert "Storage" in response.json()["detail"]
        user_redis.stop()
        for method, url, kwargs in storage_calls(users.url, "users"):
            assert_503_json(method, url, **kwargs)
        assert http().get(f"{users.url}/healthz", timeout=2).status_code == 200  # liveness does not follow

        # Back on the same port and data directory: served again without restarting the services, with
        # the data kept (append-only file), and no request ever answered 500 by a stale pooled connection.
        user_redis.start()
        order_redis.start()
        wait_until_ready(users.url)
        wait_until_ready(orders.url)
        for _ in range(20):
            assert http().get(f"{users.url}/users/{user['id']}", timeout=5).json() == user
            assert http().get(f"{orders.url}/orders/{order['id']}", timeout=5).json() == order
        assert create_user(users.url, 2).status_code == 201

        # Hung: the server accepts connections but never answers; requests end at the socket timeout.
        user_redis.pause()
        try:
            for method, url, kwargs in storage_calls(users.url, "users"):
                assert_503_json(method, url, **kwargs)
        finally:
            user_redis.resume()
        wait_until_ready(users.url)
        assert http().get(f"{users.url}/users/{user['id']}", timeout=5).json() == user

        for service in (users, orders):
            records = service.log_records()
            statuses = {r["status"] for r in access_lines(records)}
            assert 503 in statuses and 500 not in statuses, statuses
            assert not [r for r in records if r.get("event") == "unhandled_exception"]
    finally:
        user_redis.stop()
        order_redis.stop()
