"""Idempotency-Key across real gunicorn processes on one real redis-server: racing retries of one
create, spread over two order-service instances with two workers each, store exactly one order; and
a create whose answer was lost while Redis hung is found again by its retry."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from testsupport.redis_server import start_redis

RACERS = 20


@pytest.fixture
def redis_server(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def redis_env(server, db, workers=2, **extra):
    return {"REPOSITORY_BACKEND": "redis", "REDIS_URL": server.url(db), "GUNICORN_WORKERS": workers, **extra}


def order_payload(user_id):
    return {
        "user_id": user_id,
        "items": [
            {"sku": "BOOK-42", "quantity": 2, "unit_price": "12.50"},
            {"sku": "PEN", "quantity": 3, "unit_price": "0.10"},
        ],
    }


def test_racing_retries_with_one_key_across_two_instances_store_one_order(start, redis_server):
    users = start("user-svc", **redis_env(redis_server, db=0))
    a = start("order-svc", **redis_env(redis_server, db=1, USER_SVC_URL=users.url))
    b = start("order-svc", **redis_env(redis_server, db=1, USER_SVC_URL=users.url))
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
    assert replayed.count(None) <= 1 and replayed.count("true") >= RACERS - 1, replayed
    for instance in (a, b):
        listing = requests.get(f"{instance.url}/orders", timeout=10).json()
        assert listing["count"] == 1 and listing["results"] == [bodies[0]]
    raw = redis_server.client(1)
    assert raw.hgetall(f"orders:idempotency:{key}")["id"] == str(bodies[0]["id"])
    assert raw.ttl(f"orders:idempotency:{key}") > 24 * 3600 - 60

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


def test_a_create_lost_while_redis_hung_is_found_by_its_retry(start, redis_server):
    """Redis hangs past the socket timeout: the client gets 503, yet Redis runs the queued script when
    it resumes. Without a key the retry is told its own email is taken (409); with one it gets the
    user the first attempt stored."""
    users = start("user-svc", **redis_env(redis_server, db=0, workers=1))
    ada = {"name": "Ada", "email": "ada@example.com"}
    with requests.Session() as session:
        warm = session.post(f"{users.url}/users", json={"name": "Warm", "email": "warm@example.com"}, timeout=10)
        assert warm.status_code == 201  # the worker's Redis connection is open and the script loaded
        redis_server.pause()
        try:
            lost = session.post(f"{users.url}/users", json=ada, headers={"Idempotency-Key": "lost-answer"}, timeout=10)
        finally:
            redis_server.resume()
        assert lost.status_code == 503, lost.text
        deadline = time.monotonic() + 5
        while session.get(f"{users.url}/users", timeout=10).json()["count"] < 2:
            assert time.monotonic() < deadline, "the timed-out create never ran"
            time.sleep(0.1)
        assert session.post(f"{users.url}/users", json=ada, timeout=10).status_code == 409
        retry = session.post(f"{users.url}/users", json=ada, headers={"Idempotency-Key": "lost-answer"}, timeout=10)
        assert retry.status_code == 201, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json() == {"id": 2, **ada}
        assert session.get(f"{users.url}/users", timeout=10).json()["count"] == 2
