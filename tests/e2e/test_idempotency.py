"""Idempotency-Key across real gunicorn processes on real PostgreSQL servers: racing retries of one
create, spread over two order-service instances with two workers each, store exactly one order;
expired keys are purged and reusable; and a create whose answer was lost (its commit waited on a
frozen synchronous standby past the client-side deadline) is found again by its retry."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from testsupport.postgres_server import postgres_env, service_database, start_standby

RACERS = 20


def order_payload(user_id):
    return {
        "user_id": user_id,
        "items": [
            {"sku": "BOOK-42", "quantity": 2, "unit_price": "12.50"},
            {"sku": "PEN", "quantity": 3, "unit_price": "0.10"},
        ],
    }


def test_racing_retries_with_one_key_across_two_instances_store_one_order(start, postgres_server):
    users_db = service_database(postgres_server, "user-svc")
    orders_db = service_database(postgres_server, "order-svc")
    users = start("user-svc", **postgres_env(users_db))
    a = start("order-svc", **postgres_env(orders_db, USER_SVC_URL=users.url))
    b = start("order-svc", **postgres_env(orders_db, USER_SVC_URL=users.url))
    user_key = str(uuid.uuid4())
    user = requests.post(
        f"{users.url}/users",
        json={"name": "Ada", "email": "ada@example.com"},
        headers={"Idempotency-Key": user_key},
        timeout=10,
    )
    assert user.status_code == 201, user.text
    user_id = user.json()["id"]

    key = user_key  # the same key on the order service: keys are per service, so this is a new one
    barrier = threading.Barrier(RACERS)
    sessions = [requests.Session() for _ in range(RACERS)]

    def race(n):
        session, instance = sessions[n], (a, b)[n % 2]
        session.get(f"{instance.url}/healthz", timeout=10)  # connected before the start line
        barrier.wait()
        return session.post(
            f"{instance.url}/orders", json=order_payload(user_id), headers={"Idempotency-Key": key}, timeout=15
        )

    try:
        with ThreadPoolExecutor(RACERS) as pool:
            responses = list(pool.map(race, range(RACERS)))
    finally:
        for session in sessions:
            session.close()

    assert [r.status_code for r in responses] == [201] * RACERS, [(r.status_code, r.text) for r in responses]
    bodies = [r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies), bodies  # one order: same id, same created_at
    assert {r.headers["Location"] for r in responses} == {f"/orders/{bodies[0]['id']}"}
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    # Exactly one of the racers stored the order; every other one was answered with it as a replay.
    assert sorted(replayed, key=str) == [None] + ["true"] * (RACERS - 1), replayed
    for instance in (a, b):
        listing = requests.get(f"{instance.url}/orders", timeout=10).json()
        assert listing["count"] == 1 and listing["results"] == [bodies[0]]
    with orders_db.connect() as conn:
        stored = conn.execute(
            "SELECT entity_id, expires_at - now() FROM orders_idempotency_keys WHERE key = %s", [key]
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM order_items").fetchone() == (2,)
    assert len(stored) == 1 and stored[0][0] == bodies[0]["id"]
    assert 24 * 3600 - 60 < stored[0][1].total_seconds() <= 24 * 3600

    # Each service owns its keys: the user service still replays its user, and a different body
    # under the order key is refused without storing anything.
    again = requests.post(
        f"{users.url}/users",
        json={"name": "Ada", "email": "ada@example.com"},
        headers={"Idempotency-Key": user_key},
        timeout=10,
    )
    assert (again.status_code, again.headers.get("Idempotent-Replayed"), again.json()) == (201, "true", user.json())
    other = requests.post(
        f"{a.url}/orders",
        json={**order_payload(user_id), "items": [order_payload(user_id)["items"][0]]},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    assert requests.get(f"{b.url}/orders", timeout=10).json()["count"] == 1


def test_expired_keys_are_purged_and_an_expired_key_stores_anew(start, postgres_server):
    users_db = service_database(postgres_server, "user-svc")
    users = start("user-svc", **postgres_env(users_db, workers=1))
    first = requests.post(
        f"{users.url}/users",
        json={"name": "Old", "email": "old@example.com"},
        headers={"Idempotency-Key": "old"},
        timeout=10,
    )
    assert first.status_code == 201
    with users_db.connect() as conn:
        # A day and more later: this key and 150 others have expired (written as the service would).
        conn.execute("UPDATE users_idempotency_keys SET expires_at = now() - interval '1 minute'")
        conn.execute(
            "INSERT INTO users_idempotency_keys (key, fingerprint, entity_id, expires_at) "
            "SELECT 'stale-' || n, 'f', %s, now() - interval '1 hour' FROM generate_series(1, 150) n",
            [first.json()["id"]],
        )
    again = requests.post(
        f"{users.url}/users",
        json={"name": "New", "email": "new@example.com"},
        headers={"Idempotency-Key": "old"},
        timeout=10,
    )
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers, again.text
    assert again.json()["id"] != first.json()["id"]
    with users_db.connect() as conn:
        left = conn.execute("SELECT count(*) FROM users_idempotency_keys WHERE expires_at <= now()").fetchone()[0]
        assert left == 150 - 100  # the oldest batch, and the key itself
        held = conn.execute("SELECT entity_id FROM users_idempotency_keys WHERE key = 'old'").fetchone()
        assert held == (again.json()["id"],)
    requests.post(
        f"{users.url}/users", json={"name": "N", "email": "n@example.com"}, headers={"Idempotency-Key": "n"}, timeout=10
    )
    with users_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users_idempotency_keys WHERE expires_at <= now()").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM users_idempotency_keys").fetchone() == (2,)


def test_a_create_whose_answer_was_lost_is_found_by_its_retry(start, postgres_server):
    """The synchronous standby freezes: the primary has written the commit but waits for the standby
    to confirm it, and the client-side deadline answers 503. Once the standby is back the commit
    completes. Without a key the retry is told its own email is taken (409); with one it gets the
    user the first attempt stored."""
    users_db = service_database(postgres_server, "user-svc")
    standby = start_standby(postgres_server)
    try:
        users = start("user-svc", **postgres_env(users_db, workers=1, DATABASE_STATEMENT_TIMEOUT=1))
        ada = {"name": "Ada", "email": "ada@example.com"}
        with requests.Session() as session:
            warm = session.post(f"{users.url}/users", json={"name": "Warm", "email": "warm@example.com"}, timeout=10)
            assert warm.status_code == 201
            standby.pause()
            try:
                lost = session.post(
                    f"{users.url}/users", json=ada, headers={"Idempotency-Key": "lost-answer"}, timeout=10
                )
            finally:
                standby.resume()
            assert lost.status_code == 503, lost.text
            deadline = time.monotonic() + 10
            while session.get(f"{users.url}/users", timeout=10).json()["count"] < 2:
                assert time.monotonic() < deadline, "the commit never completed"
                time.sleep(0.1)
            assert session.post(f"{users.url}/users", json=ada, timeout=10).status_code == 409
            retry = session.post(f"{users.url}/users", json=ada, headers={"Idempotency-Key": "lost-answer"}, timeout=10)
            assert retry.status_code == 201, retry.text
            assert retry.headers["Idempotent-Replayed"] == "true"
            assert retry.json() == {"id": 2, **ada}
            assert session.get(f"{users.url}/users", timeout=10).json()["count"] == 2
    finally:
        standby.cleanup()
        with postgres_server.connect() as conn:  # no standby to wait for in the module's next tests
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")
