"""The user client against a real HTTP server on loopback that fails in scripted ways."""

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import structlog

from orders.metrics import USER_CHECK_RETRIES, USER_CHECKS
from orders.user_client import UserClient, UserServiceUnavailable
from testsupport.scripted_server import ScriptedServer, drop, respond, respond_text, respond_then_close
from testsupport.services import free_port

FOUND = respond(200, {"id": 1})


def make_client(url, attempts=3, deadline=3.0, connect_timeout=0.5, read_timeout=0.5):
    return UserClient(
        url, connect_timeout=connect_timeout, read_timeout=read_timeout, attempts=attempts, deadline=deadline
    )


def test_found_in_one_attempt():
    with ScriptedServer([FOUND]) as server:
        assert make_client(server.url).user_exists(1) is True
    assert [r.path for r in server.requests] == ["/users/1"]


def test_404_means_not_found_and_is_not_retried():
    with ScriptedServer([respond(404)]) as server:
        assert make_client(server.url).user_exists(7) is False
    assert len(server.requests) == 1


def test_a_404_that_is_not_the_user_services_answer_is_unavailable_not_unknown_user():
    """Envoy answers 404 with an empty text body when it has no route: that is no verdict on the user."""
    with ScriptedServer([respond_text(404)]) as server, pytest.raises(UserServiceUnavailable, match="404"):
        make_client(server.url).user_exists(7)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 409, 429, 500])
def test_other_errors_are_unavailable_without_retry(status):
    with ScriptedServer([respond(status)]) as server, pytest.raises(UserServiceUnavailable):
        make_client(server.url).user_exists(1)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried_until_success(status):
    with ScriptedServer([respond(status), respond(status), FOUND]) as server:
        assert make_client(server.url).user_exists(1) is True
    assert len(server.requests) == 3


def test_gives_up_after_the_configured_attempts():
    retries_before = USER_CHECK_RETRIES._value.get()
    unavailable_before = USER_CHECKS.labels("unavailable")._value.get()
    with ScriptedServer([respond(503)]) as server, pytest.raises(UserServiceUnavailable):
        make_client(server.url, attempts=4).user_exists(1)
    assert len(server.requests) == 4
    assert USER_CHECK_RETRIES._value.get() - retries_before == 3
    assert USER_CHECKS.labels("unavailable")._value.get() - unavailable_before == 1


def test_backoff_waits_between_attempts_with_jitter():
    with ScriptedServer([respond(503)]) as server, pytest.raises(UserServiceUnavailable):
        make_client(server.url, attempts=4).user_exists(1)
    gaps = [b.at - a.at for a, b in itertools.pairwise(server.requests)]
    assert all(gap >= 0.05 for gap in gaps), gaps  # initial backoff is 50 ms, growing
    assert gaps[2] > gaps[0]


def test_dropped_connections_are_retried():
    with ScriptedServer([drop(), FOUND]) as server:
        assert make_client(server.url).user_exists(1) is True
    assert len(server.requests) == 2


def test_refused_connections_are_retried_then_unavailable():
    started = time.monotonic()
    with pytest.raises(UserServiceUnavailable):
        make_client(f"http://127.0.0.1:{free_port()}", attempts=3).user_exists(1)
    assert time.monotonic() - started < 3.0


def test_read_timeouts_are_retried():
    with ScriptedServer([respond(200, delay=1.0), FOUND]) as server:
        assert make_client(server.url, read_timeout=0.2).user_exists(1) is True
    assert len(server.requests) == 2


def test_deadline_bounds_the_whole_check_even_with_long_timeouts():
    with ScriptedServer([respond(200, delay=5.0)]) as server:
        started = time.monotonic()
        with pytest.raises(UserServiceUnavailable):
            make_client(server.url, attempts=10, read_timeout=10, deadline=0.8).user_exists(1)
        elapsed = time.monotonic() - started
    assert elapsed < 1.3, elapsed
    assert 1 <= len(server.requests) <= 2


def test_connections_are_pooled_and_kept_alive():
    with ScriptedServer([FOUND]) as server:
        client = make_client(server.url)
        for user_id in range(5):
            client.user_exists(user_id)
    assert len({r.client_port for r in server.requests}) == 1


def test_a_kept_alive_connection_the_server_closed_is_not_lent_again():
    """The user service ends idle keep-alive connections (gunicorn's keepalive): the next check opens
    a new one at once, rather than failing on the closed one and retrying."""
    with ScriptedServer([respond_then_close(200, {"id": 1}), FOUND]) as server:
        client = make_client(server.url)
        assert client.user_exists(1) is True
        time.sleep(0.2)  # the server's end of the connection arrives
        retries_before = USER_CHECK_RETRIES._value.get()
        assert client.user_exists(2) is True
    assert USER_CHECK_RETRIES._value.get() == retries_before
    assert len(server.requests) == 2
    assert server.requests[0].client_port != server.requests[1].client_port


def test_an_open_kept_alive_connection_is_lent_again():
    with ScriptedServer([FOUND]) as server:
        client = make_client(server.url)
        client.user_exists(1)
        time.sleep(0.2)
        client.user_exists(2)
    assert server.requests[0].client_port == server.requests[1].client_port


def test_request_id_is_forwarded():
    structlog.contextvars.bind_contextvars(request_id="req-123")
    try:
        with ScriptedServer([FOUND]) as server:
            make_client(server.url).user_exists(1)
    finally:
        structlog.contextvars.clear_contextvars()
    assert server.requests[0].headers["x-request-id"] == "req-123"


def test_the_environments_proxy_settings_do_not_apply(monkeypatch):
    """The user service is called directly: a proxy set for outbound traffic must not take the call."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a proxied call would fail
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with ScriptedServer([FOUND]) as server:
        assert make_client(server.url, attempts=1).user_exists(1) is True
    assert [r.path for r in server.requests] == ["/users/1"]


def test_checks_beyond_the_pool_wait_for_a_pooled_connection_instead_of_opening_more():
    with ScriptedServer([respond(200, {"id": 1}, delay=0.05)]) as server:
        client = UserClient(server.url, connect_timeout=2.0, read_timeout=2.0, attempts=1, deadline=5.0, pool_size=2)
        with ThreadPoolExecutor(max_workers=8) as checks:
            assert list(checks.map(client.user_exists, range(16))) == [True] * 16
    assert len(server.requests) == 16
    assert len({r.client_port for r in server.requests}) <= 2


def test_a_check_that_finds_the_pool_busy_past_the_connect_timeout_is_unavailable():
    with ScriptedServer([respond(200, {"id": 1}, delay=1.0)]) as server:
        client = UserClient(server.url, connect_timeout=0.1, read_timeout=2.0, attempts=2, deadline=3.0, pool_size=1)
        with ThreadPoolExecutor(max_workers=2) as checks:
            slow = checks.submit(client.user_exists, 1)
            time.sleep(0.2)  # the one connection is busy for a second
            started = time.monotonic()
            with pytest.raises(UserServiceUnavailable, match="Pool is empty"):
                client.user_exists(2)
            assert time.monotonic() - started < 0.8  # two waits of 0.1 s and a backoff, not the slow call
            assert slow.result() is True


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8001", "http://user-svc:8000/", "http://user-svc/api"])
def test_each_attempts_request_is_what_requests_would_prepare_for_the_same_call(base_url):
    """Attempts send a copy of one request prepared at start, the user's id appended to its URL:
    the same method, URL and headers as a Session preparing GET /users/<id> from scratch."""
    client = make_client(base_url)
    stock = client.session.prepare_request(
        requests.Request(
            "GET",
            f"{base_url.rstrip('/')}/users/42",
            headers={"Accept": "application/json", "X-Request-ID": "req-1"},
        )
    )
    sent = client.user_request(42, "req-1")
    assert (sent.method, sent.url, dict(sent.headers), sent.body) == (
        stock.method,
        stock.url,
        dict(stock.headers),
        stock.body,
    )
    assert "X-Request-ID" not in client.user_request(42, None).headers
    assert "X-Request-ID" not in client.users_request.headers  # each attempt has its own copy
