"""Both services as real gunicorn processes on loopback, talking to each other over HTTP."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from testsupport.scripted_server import ScriptedServer, proxy, respond
from testsupport.services import start_service

ORDER = {
    "user_id": None,
    "items": [
        {"sku": "BOOK-1", "quantity": 2, "unit_price": "12.50"},
        {"sku": "PEN", "quantity": 3, "unit_price": "0.10"},
    ],
}


def order_for(user_id):
    return {**ORDER, "user_id": user_id}


def create_user(url, email="ada@example.com", name="Ada"):
    return requests.post(f"{url}/users", json={"name": name, "email": email}, timeout=10)


def test_create_user_and_order_and_read_both_back(user_service, order_service):
    user = create_user(user_service.url)
    assert user.status_code == 201
    user_id = user.json()["id"]
    assert requests.get(f"{user_service.url}{user.headers['Location']}", timeout=5).json() == user.json()

    order = requests.post(f"{order_service.url}/orders", json=order_for(user_id), timeout=10)
    assert order.status_code == 201, order.text
    assert order.json()["total"] == "25.30"
    assert requests.get(f"{order_service.url}/orders/{order.json()['id']}/", timeout=5).json() == order.json()
    listing = requests.get(f"{order_service.url}/orders", params={"user_id": user_id}, timeout=5).json()
    assert [o["id"] for o in listing["results"]] == [order.json()["id"]]


def test_unknown_user_is_404_and_nothing_is_stored(order_service):
    response = requests.post(f"{order_service.url}/orders", json=order_for(4242), timeout=10)
    assert response.status_code == 404
    assert response.json() == {"detail": "User 4242 not found"}
    assert requests.get(f"{order_service.url}/orders", timeout=5).json()["count"] == 0


def test_user_service_stopped_gives_503_within_the_deadline(user_service, order_service):
    user_id = create_user(user_service.url).json()["id"]
    user_service.stop()
    started = time.monotonic()
    response = requests.post(f"{order_service.url}/orders", json=order_for(user_id), timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "detail" in response.json()
    assert elapsed < 3.0, f"answered after {elapsed:.2f}s"
    assert requests.get(f"{order_service.url}/orders", timeout=5).json()["count"] == 0


def test_user_service_hanging_gives_503_within_the_deadline(start):
    with ScriptedServer([respond(200, delay=30)]) as hanging:
        order_service = start("order-svc", USER_SVC_URL=hanging.url)
        started = time.monotonic()
        response = requests.post(f"{order_service.url}/orders", json=order_for(1), timeout=10)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert elapsed < 3.5, f"answered after {elapsed:.2f}s (deadline 3 s)"
    assert requests.get(f"{order_service.url}/orders", timeout=5).json()["count"] == 0


def test_user_service_failing_twice_still_lets_the_order_through(start, user_service):
    user_id = create_user(user_service.url).json()["id"]
    with ScriptedServer([respond(503), respond(502), proxy(user_service.url)]) as flaky:
        order_service = start("order-svc", USER_SVC_URL=flaky.url)
        response = requests.post(f"{order_service.url}/orders", json=order_for(user_id), timeout=10)
    assert response.status_code == 201, response.text
    assert [r.path for r in flaky.requests] == [f"/users/{user_id}"] * 3


def test_200_concurrent_creates_get_distinct_ids_all_readable(user_service):
    session_per_thread = threading.local()

    def create(n):
        session = getattr(session_per_thread, "s", None) or requests.Session()
        session_per_thread.s = session
        response = session.post(
            f"{user_service.url}/users", json={"name": f"U{n}", "email": f"u{n}@example.com"}, timeout=15
        )
        assert response.status_code == 201, response.text
        user = response.json()
        assert session.get(f"{user_service.url}/users/{user['id']}", timeout=15).status_code == 200
        return user["id"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = list(pool.map(create, range(200)))
    assert len(set(ids)) == 200
    assert sorted(ids) == list(range(1, 201))
    assert requests.get(f"{user_service.url}/users", timeout=5).json()["count"] == 200


def test_racing_duplicate_emails_give_exactly_one_201(user_service):
    barrier = threading.Barrier(20)

    def create(n):
        barrier.wait()
        email = "Race@Example.com" if n % 2 else "race@example.COM"
        return create_user(user_service.url, email=email, name=f"Racer {n}").status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(create, range(20)))
    assert statuses.count(201) == 1
    assert statuses.count(409) == 19
    assert requests.get(f"{user_service.url}/users", timeout=5).json()["count"] == 1


def test_paths_work_with_and_without_slash_and_post_is_never_redirected(user_service):
    for path in ("/users", "/users/"):
        response = requests.post(
            f"{user_service.url}{path}",
            json={"name": "A", "email": f"a{len(path)}@x.io"},
            allow_redirects=False,
            timeout=5,
        )
        assert response.status_code == 201
    for path in (
        "/users/1",
        "/users/1/",
        "/healthz",
        "/healthz/",
        "/readyz",
        "/readyz/",
        "/metrics",
        "/metrics/",
        "/schema",
        "/schema/",
        "/docs",
        "/docs/",
    ):
        assert requests.get(f"{user_service.url}{path}", allow_redirects=False, timeout=5).status_code == 200


def test_oversized_bodies_get_413_declared_or_chunked(user_service):
    big = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'", "email": "a@b.io"}'
    declared = requests.post(
        f"{user_service.url}/users", data=big, headers={"Content-Type": "application/json"}, timeout=10
    )
    chunked = requests.post(
        f"{user_service.url}/users",
        data=iter([big[:500_000], big[500_000:]]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert (declared.status_code, chunked.status_code) == (413, 413)
    assert "limit" in declared.json()["detail"] and "limit" in chunked.json()["detail"]


def test_a_chunked_body_is_answered_as_the_same_body_with_its_length_declared(user_service):
    """Django reads no body without Content-Length; svc_common.api.request_guards.ChunkedRequestBody
    reads a chunked one first, so that it is not taken for an empty body."""
    url, headers = f"{user_service.url}/users", {"Content-Type": "application/json"}
    valid = json.dumps({"name": "Chunk", "email": "chunk@example.com"}).encode()
    chunked = requests.post(url, data=iter([valid[:10], valid[10:]]), headers=headers, timeout=10)
    assert chunked.status_code == 201 and chunked.json()["name"] == "Chunk", chunked.text
    for body in (b'{"name": 5, "email": "x"}', b"{not json", b""):
        as_chunks = requests.post(url, data=iter([body[:3], body[3:]]), headers=headers, timeout=10)
        declared = requests.post(url, data=body, headers=headers, timeout=10)
        assert as_chunks.request.headers.get("Transfer-Encoding") == "chunked"
        assert (as_chunks.status_code, as_chunks.json()) == (declared.status_code, declared.json()), body


def test_memory_backend_refuses_several_workers(tmp_path):
    try:
        start_service("user-svc", tmp_path, env={"GUNICORN_WORKERS": "2"}, ready_timeout=10)
    except RuntimeError as error:
        message = str(error)
    else:
        raise AssertionError("two workers on the in-memory backend must not start")
    assert "exited with 2" in message
    assert "REPOSITORY_BACKEND=memory" in message
