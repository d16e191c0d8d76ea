"""What both services write: one JSON object per line (gunicorn's own lines included), one access line
per request, request and trace ids on every line of a request, incoming x-request-id honoured and
forwarded, no email addresses, and no line lost or torn when many threads log at once."""

import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from svc_common.observability.log_config import EMAIL_MASK, mask_emails
from testsupport.observability import access_lines, records_for, started, wait_for_records
from testsupport.scripted_server import ScriptedServer, proxy
from testsupport.services import poll_until

REQUIRED = {"timestamp", "level", "service", "event"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
EMAIL_LIKE = re.compile(r"[A-Za-z0-9._%+-]+(@|%40)[A-Za-z0-9-]+\.[A-Za-z]", re.IGNORECASE)
ORDER_ITEMS = [{"sku": "MUG", "quantity": 1, "unit_price": "7.00"}]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """User service; order service calling it through a scripted pass-through that records headers."""
    log_dir = tmp_path_factory.mktemp("logging")
    with started(log_dir, ("user-svc", {})) as (user,), ScriptedServer([proxy(user.url)]) as recorder:
        with started(log_dir, ("order-svc", {"USER_SVC_URL": recorder.url})) as (order,):
            yield user, order, recorder


def sidecar_trace_headers(trace_id):
    """The B3 headers an Envoy sidecar adds: with no OTLP endpoint the services record no spans of
    their own, and carry this context through."""
    return {"X-B3-TraceId": trace_id, "X-B3-SpanId": uuid.uuid4().hex[:16], "X-B3-Sampled": "1"}


def access_line_for(service, rid):
    records = wait_for_records(service, lambda rs: access_lines(records_for(rs, rid)))
    return records_for(records, rid)


def check_lines(service, name):
    text = service.log_text()
    assert text.strip()
    records = service.log_records()  # fails on any line that is not JSON
    for record in records:
        assert isinstance(record, dict)
        assert record.keys() >= REQUIRED, record
        assert record["service"] == name, record
        assert TIMESTAMP.match(record["timestamp"]), record
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, record
        if record.get("logger", "").startswith("django_structlog") or record in access_lines([record]):
            assert record.get("request_id"), record  # every line about a request names it
        assert not EMAIL_LIKE.search(str(record)), record
    assert not EMAIL_LIKE.search(text)
    return records


def test_a_request_id_is_honoured_forwarded_and_on_every_line_with_the_trace_id(services):
    user, order, recorder = services
    user_id = requests.post(f"{user.url}/users", json={"name": "Cy", "email": "cy@example.com"}, timeout=5).json()["id"]
    rid = f"logging-{uuid.uuid4()}"
    response = requests.post(
        f"{order.url}/orders",
        json={"user_id": user_id, "items": ORDER_ITEMS},
        headers={"X-Request-ID": rid, **sidecar_trace_headers(trace_id := uuid.uuid4().hex)},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]

    order_lines, user_lines = access_line_for(order, rid), access_line_for(user, rid)
    assert {r.get("trace_id") for r in order_lines} == {r.get("trace_id") for r in user_lines} == {trace_id}
    # One access line per request; the domain event keeps its own line.
    assert [r["event"] for r in order_lines] == ["order_created", "request_finished"]
    assert [r["event"] for r in user_lines] == ["request_finished"]

    (access,) = access_lines(order_lines)
    assert (access["user_id"], access["order_id"], access["status"]) == (user_id, order_id, 201)
    assert access["method"] == "POST" and access["path"] == "/orders" and access["route"] == "/orders"
    assert access["duration_ms"] > 0 and access["bytes"] == len(response.content) and access["peer"] == "127.0.0.1"
    assert access["trace_id"] == trace_id and len(access["span_id"]) == 16
    (user_access,) = access_lines(user_lines)
    assert (user_access["user_id"], user_access["route"], user_access["status"]) == (user_id, "/users/{pk}", 200)

    # what the order service sent the user service: the same request id, and trace context in both
    # W3C and B3 form (Envoy sidecars read either)
    (sent,) = [r.headers for r in recorder.requests if r.headers.get("x-request-id") == rid]
    assert sent["traceparent"].split("-")[1] == trace_id
    assert sent["x-b3-traceid"] == trace_id


def test_request_ids_do_not_leak_between_concurrent_requests(services):
    """A gevent worker serves concurrent requests in greenlets of one thread: each forwarded id is its own request's."""
    user, order, recorder = services
    user_id = requests.post(f"{user.url}/users", json={"name": "Di", "email": "di@example.com"}, timeout=5).json()["id"]
    rids = [f"concurrent-{n}-{uuid.uuid4()}" for n in range(24)]

    trace_ids = {rid: uuid.uuid4().hex for rid in rids}

    def place(rid):
        return requests.post(
            f"{order.url}/orders",
            json={"user_id": user_id, "items": ORDER_ITEMS},
            headers={"X-Request-ID": rid, **sidecar_trace_headers(trace_ids[rid])},
            timeout=10,
        ).status_code

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(place, rids)) == {201}
    forwarded = [r.headers.get("x-request-id") for r in recorder.requests]
    assert sorted(rid for rid in forwarded if rid.startswith("concurrent-")) == sorted(rids)
    records = wait_for_records(order, lambda rs: all(access_lines(records_for(rs, rid)) for rid in rids))
    for rid in rids:
        lines = records_for(records, rid)
        assert {r["trace_id"] for r in lines} == {trace_ids[rid]}
        assert [r["event"] for r in lines] == ["order_created", "request_finished"]


def test_a_request_without_an_id_gets_one_and_forwards_it(services):
    _, order, recorder = services
    before = len(recorder.requests)
    requests.post(f"{order.url}/orders", json={"user_id": 55555, "items": ORDER_ITEMS}, timeout=10)
    (sent,) = [r.headers for r in recorder.requests[before:]]
    rid = sent["x-request-id"]
    uuid.UUID(rid)  # made up by django-structlog
    assert [r["status"] for r in access_lines(access_line_for(order, rid))] == [404]


def test_no_email_address_reaches_any_line(services):
    user, order, _ = services
    emails = [f"secret.person{n}@example.com" for n in range(3)]
    for email in emails:
        assert requests.post(f"{user.url}/users", json={"name": "S", "email": email}, timeout=5).status_code == 201
    assert requests.post(f"{user.url}/users", json={"name": "S", "email": emails[0]}, timeout=5).status_code == 409
    assert requests.post(f"{user.url}/users", json={"name": "S", "email": "not-an-email"}, timeout=5).status_code == 400
    # where a client puts one in the URL, the safety net masks it (raw and percent-encoded)
    rid = f"mask-{uuid.uuid4()}"
    requests.get(f"{user.url}/users/{emails[1]}", params={"email": emails[2]}, headers={"X-Request-ID": rid}, timeout=5)
    lines = access_line_for(user, rid)
    assert EMAIL_MASK in str(lines)
    for service, name in ((user, "user-svc"), (order, "order-svc")):
        check_lines(service, name)
        for email in emails:
            assert email.split("@")[0] not in service.log_text()


def test_every_line_of_both_services_is_json_with_the_required_keys(services, running_services):
    user, order, _ = services
    requests.get(f"{user.url}/nowhere", timeout=5)  # 404 from Django's resolver
    requests.post(f"{user.url}/users", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5)
    requests.post(f"{user.url}/users", data=b"x" * (1024 * 1024 + 1), timeout=5)  # 413 before any view runs
    for service, name in (
        (user, "user-svc"),
        (order, "order-svc"),
        (running_services.user, "user-svc"),
        (running_services.order, "order-svc"),
    ):
        records = check_lines(service, name)
        loggers = {r.get("logger") for r in records}
        assert {"gunicorn.error", "django_structlog.middlewares.request"} <= loggers
        assert "gunicorn.access" not in loggers  # one line per request, and that one is Django's


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (f"GET /users?page={'9' * 5000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),  # request line > 4094 bytes
        ("GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n", 400),  # NUL in a header
        (f"GET /users HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 9000}\r\n\r\n", 431),  # header > 8190 bytes
    ],
)
def test_a_request_gunicorn_refuses_is_logged_in_exactly_one_line(tmp_path, request_head, status):
    """Gunicorn answers these before Django sees them, and warns about each itself: one line per
    refusal all the same, with its status and a request id."""
    with started(tmp_path, ("user-svc", {})) as (user,):
        # Lines are written by a thread of their own: let the start-up's last ones (the readiness
        # probe's access line) land before counting.
        before = len(poll_until(settled_records(user), lambda records: records is not None, 10, repr))
        with socket.create_connection(("127.0.0.1", user.port), timeout=5) as sock:
            sock.sendall(request_head.encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
        wait_for_records(user, lambda rs: access_lines(rs[before:]))
        time.sleep(0.5)  # a second line about the same refusal would have come by now
        new_lines = user.log_records()[before:]
    (line,) = new_lines
    assert (line["event"], line["status"], line["level"], line["peer"]) == (
        "request_refused",
        status,
        "warning",
        "127.0.0.1",
    )
    uuid.UUID(line["request_id"])
    assert line["logger"] == "svc_common.server.gunicorn_errors" and line["service"] == "user-svc"


def settled_records(service):
    """A reader of the service's log records that gives them once they stopped changing, else None."""
    last: list[list[dict]] = []

    def read():
        time.sleep(0.3)
        records = service.log_records()
        settled = records if last and last[-1] == records else None
        last.append(records)
        return settled

    return read


def test_log_level_comes_from_the_environment(tmp_path):
    with started(tmp_path, ("user-svc", {"LOG_LEVEL": "WARNING"})) as (user,):
        requests.get(f"{user.url}/users", timeout=5)
        rid = f"warn-{uuid.uuid4()}"
        assert requests.get(f"{user.url}/users/777", headers={"X-Request-ID": rid}, timeout=5).status_code == 404
        records = wait_for_records(user, lambda rs: any(r["event"] == "request_finished" for r in records_for(rs, rid)))
    records = user.log_records()
    assert records and all(r["level"] in {"warning", "error", "critical"} for r in records), records


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@example.com", EMAIL_MASK),
        ("GET /users?email=Ada.Lovelace%40Example.org&page=2", f"GET /users?email={EMAIL_MASK}&page=2"),
        ("x first.last+tag@mail.example.co.uk y", f"x {EMAIL_MASK} y"),
        ("no address: user@localhost, @handle, a@b", "no address: user@localhost, @handle, a@b"),
    ],
)
def test_email_mask_on_strings(value, expected):
    assert mask_emails(None, "info", {"event": value}) == {"event": expected}


def test_email_mask_reaches_into_structures_and_leaves_other_values_alone():
    class Account:
        def __repr__(self):
            return "Account(owner='bo@example.com')"

    event = {
        "event": "e",
        "n": 3,
        "ok": True,
        "none": None,
        "ratio": 0.5,
        "nested": {"to": ["x@example.com", 1]},
        "obj": Account(),
    }
    assert mask_emails(None, "info", event) == {
        "event": "e",
        "n": 3,
        "ok": True,
        "none": None,
        "ratio": 0.5,
        "nested": {"to": [EMAIL_MASK, 1]},
        "obj": f"Account(owner='{EMAIL_MASK}')",
    }
