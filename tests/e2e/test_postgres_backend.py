"""Both services on REPOSITORY_BACKEND=postgres: several instances with several gunicorn workers each,
sharing one real PostgreSQL server; and what clients see when it goes away, hangs or makes a statement
wait (503 JSON, within a bounded time, never 500)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from testsupport.observability import access_lines
from testsupport.postgres_server import postgres_bin_dir, postgres_env, service_database, start_postgres

THREADS = 32
CREATES = 200
STATEMENT_TIMEOUT = 1.0  # DATABASE_STATEMENT_TIMEOUT here; the client-side bound is one second more
# The longest a request may take while the database is down or hung: a cut call (statement timeout
# + 1 s) and then a new connection's connect timeout (2 s), and some slack for a loaded machine.
LATENCY_LIMIT = 6.0


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


@pytest.fixture
def users_db(postgres_server):
    return service_database(postgres_server, "user-svc")


@pytest.fixture
def orders_db(postgres_server):
    return service_database(postgres_server, "order-svc")


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


def test_postgres_server_is_installed():
    assert (postgres_bin_dir() / "postgres").exists()


def test_two_user_instances_hand_out_distinct_ids_with_read_your_writes(start, users_db):
    a = start("user-svc", **postgres_env(users_db))
    b = start("user-svc", **postgres_env(users_db))

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


def test_racing_duplicate_emails_across_instances_give_one_201_and_the_rest_409(start, users_db):
    a = start("user-svc", **postgres_env(users_db))
    b = start("user-svc", **postgres_env(users_db))
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


def test_two_order_instances_hand_out_distinct_ids_with_read_your_writes(start, users_db, orders_db):
    users = start("user-svc", **postgres_env(users_db))
    a = start("order-svc", **postgres_env(orders_db, USER_SVC_URL=users.url))
    b = start("order-svc", **postgres_env(orders_db, USER_SVC_URL=users.url))
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


def assert_503_json(method, url, **kwargs):
    started = time.monotonic()
    response = http().request(method, url, timeout=LATENCY_LIMIT + 2, **kwargs)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, f"{method} {url}: {response.status_code} {response.text[:300]}"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["detail"]
    assert elapsed < LATENCY_LIMIT, f"{method} {url} took {elapsed:.2f}s"
    return response


def assert_each_503_json(calls):
    """``assert_503_json`` for each (method, url, kwargs), all at once: a wait each, not one after another."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(assert_503_json, method, url, **kwargs) for method, url, kwargs in calls]
        return [future.result() for future in futures]


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


def test_database_down_hung_or_locked_gives_503_json_quickly_and_recovers(start, postgres_server):
    # Separate servers, so the order service's own storage can fail while the user check still works.
    order_server = start_postgres()
    try:
        users_db = service_database(postgres_server, "user-svc")
        orders_db = service_database(order_server, "order-svc")
        timeouts = {"DATABASE_STATEMENT_TIMEOUT": STATEMENT_TIMEOUT}
        users = start("user-svc", **postgres_env(users_db, **timeouts))
        orders = start("order-svc", **postgres_env(orders_db, USER_SVC_URL=users.url, **timeouts))
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
        order_server.stop()
        calls = storage_calls(orders.url, "orders")
        for (method, url, _), response in zip(calls, assert_each_503_json(calls), strict=True):
            if url.endswith("/orders") and method == "POST":
                assert "Storage" in response.json()["detail"]
        postgres_server.stop()
        assert_each_503_json(storage_calls(users.url, "users"))
        assert http().get(f"{users.url}/healthz", timeout=2).status_code == 200  # liveness does not follow

        # Back on the same port and data directory: served again without restarting the services, with
        # the data kept, and no request ever answered 500 by a stale persistent connection.
        postgres_server.start()
        order_server.start()
        wait_until_ready(users.url)
        wait_until_ready(orders.url)
        for _ in range(20):
            assert http().get(f"{users.url}/users/{user['id']}", timeout=5).json() == user
            assert http().get(f"{orders.url}/orders/{order['id']}", timeout=5).json() == order
        assert create_user(users.url, 2).status_code == 201

        # Hung: every server process frozen (SIGSTOP). The kernel still accepts and acknowledges, so
        # only the client-side bounds end these requests: the call deadline, then the connect timeout.
        postgres_server.pause()
        try:
            # A write and a readiness check at once: on a pooled connection the call deadline cuts
            # them, on a new one the connect timeout ends them.
            assert_each_503_json(storage_calls(users.url, "users")[::3])
        finally:
            postgres_server.resume()
        wait_until_ready(users.url)
        assert http().get(f"{users.url}/users/{user['id']}", timeout=5).json() == user

        # A statement that waits: another session holds the table. The server's own timeouts end the
        # wait; readiness stays green, since the database itself answers.
        with users_db.connect() as blocker:
            blocker.autocommit = False
            blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            assert_each_503_json(storage_calls(users.url, "users")[:3])
            assert http().get(f"{users.url}/readyz", timeout=5).status_code == 200
            blocker.rollback()
        assert create_user(users.url, 3).status_code == 201
        count, _ = all_pages(users.url, "/users")
        assert count == 3

        for service in (users, orders):
            records = service.log_records()
            statuses = {r["status"] for r in access_lines(records)}
            assert 503 in statuses and 500 not in statuses, statuses
            assert not [r for r in records if r.get("event") == "unhandled_exception"]
    finally:
        order_server.cleanup()


def test_ids_beyond_bigint_are_not_found_or_refused(start, users_db, orders_db):
    users = start("user-svc", **postgres_env(users_db, workers=1))
    orders = start("order-svc", **postgres_env(orders_db, workers=1, USER_SVC_URL=users.url))
    for too_big in (2**63, 10**30):
        assert http().get(f"{users.url}/users/{too_big}", timeout=5).status_code == 404
        assert http().get(f"{orders.url}/orders/{too_big}", timeout=5).status_code == 404
        listed = http().get(f"{orders.url}/orders", params={"user_id": too_big}, timeout=5)
        assert listed.status_code == 400, listed.text
    assert http().get(f"{users.url}/users/{2**63 - 1}", timeout=5).status_code == 404


def test_replicas_migrating_at_once_apply_each_migration_once(postgres_server):
    """Pods of one Deployment start together and each runs `manage.py migrate` (Kubernetes init
    container): the advisory lock makes them take turns, so none fails and none applies twice."""
    from concurrent.futures import ThreadPoolExecutor as Pool

    from testsupport.postgres_server import migrate

    for service, table in (("user-svc", "users"), ("order-svc", "orders")):
        database = postgres_server.create_database(f"racing_{table}")
        with Pool(4) as pool:
            list(pool.map(lambda _: migrate(database.url(), service), range(4)))  # noqa: B023
        with database.connect() as conn:
            applied = conn.execute("SELECT app, name, count(*) FROM django_migrations GROUP BY app, name").fetchall()
            assert applied and all(count == 1 for _, _, count in applied), applied
            assert conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (table,)
