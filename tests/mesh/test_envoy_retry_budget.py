"""The retry budget of istio/README.md, checked against a real Envoy on loopback instead of on paper.

The in-mesh routes of istio/virtualservices.yaml are translated into Envoy routes the way istiod does
(testsupport/envoy.py), with the cluster settings of istio/destinationrules.yaml that matter here
(connect timeout, maxRetries, outlier detection). Each upstream is one host, like a service with one
replica. For order-svc -> user-svc, Envoy plays the order pod's sidecar:

    test -> order service (real gunicorn, client settings of order-svc-config) -> Envoy -> scripted user service

For writes, Envoy plays a caller's sidecar in front of a scripted "order service". Nothing in here
hard-codes a retry number: every count and time comes from the YAML (and the README must state it).
"""

import contextlib
import itertools
import socket
import struct
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
import yaml

from testsupport.envoy import (
    ORDER_SIDECAR,
    bootstrap,
    cluster_from_destination_rule,
    http_listener,
    istio_object,
    parse_duration,
    routes_from_virtual_service,
    start_envoy,
)
from testsupport.observability import scrape, value
from testsupport.scripted_server import ScriptedServer, drop, proxy, respond

ROOT = Path(__file__).resolve().parents[2]
ORDER_ITEMS = [{"sku": "BOOK-1", "quantity": 1, "unit_price": "9.99"}]
CLIENT_SETTINGS = ("USER_SVC_CONNECT_TIMEOUT", "USER_SVC_READ_TIMEOUT", "USER_SVC_ATTEMPTS", "USER_SVC_DEADLINE")
# Envoy retries an attempt that got no response in time (per-try timeout) only under these retry_on
# conditions (checked on Envoy 1.40: `retriable-status-codes` with 504 does not retry it).
TIMEOUT_RETRY_CONDITIONS = {"5xx", "gateway-error", "reset"}
ANSWER_AFTER_DEADLINE = 0.5  # seconds: the request around a user check that ran to its deadline


def route_for(virtual_service: dict, method: str) -> dict:
    """The VirtualService's route a request with ``method`` takes (first match wins, as in Istio)."""
    for http in virtual_service["spec"]["http"]:
        matches = http.get("match") or [{}]
        if any(m.get("method", {}).get("exact", method) == method for m in matches):
            return http
    raise AssertionError(f"no route of {virtual_service['metadata']['name']} takes {method}")


def retry_conditions(route: dict) -> set[str]:
    return {part.strip() for part in route["retries"]["retryOn"].split(",")}


def order_client_settings() -> dict[str, str]:
    """USER_SVC_* as deployed: the literals of the order-svc-config ConfigMap in k8s/base."""
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "order-svc-config"]
    literals = dict(literal.split("=", 1) for literal in generator["literals"])
    return {key: literals[key] for key in CLIENT_SETTINGS}


def mesh_cluster(service: str, upstream) -> dict:
    """The cluster istiod builds from the service's DestinationRule (connect timeout, maxRetries,
    outlier detection, ...), with one replica at ``upstream`` (URL or port)."""
    port = upstream if isinstance(upstream, int) else int(str(upstream).rsplit(":", 1)[-1])
    rule = istio_object("destinationrules.yaml", "DestinationRule", service)
    return cluster_from_destination_rule(rule, service, ports=[port])


@pytest.fixture
def sidecar(tmp_path):
    """sidecar(virtual_service_name, upstream) -> a running Envoy whose listener "outbound" routes as the
    VirtualService says, to one cluster named after the service, at ``upstream`` (URL or port)."""
    numbers = itertools.count()

    with ExitStack() as started:  # stops every Envoy at teardown, the last started first

        def _start(service: str, upstream):
            virtual_service = istio_object("virtualservices.yaml", "VirtualService", service)
            config = bootstrap(
                [http_listener("outbound", routes_from_virtual_service(virtual_service, service))],
                [mesh_cluster(service, upstream)],
                node_cluster=ORDER_SIDECAR,
            )
            return started.enter_context(start_envoy(config, tmp_path / f"envoy-{next(numbers)}"))

        yield _start


@pytest.fixture
def meshed_order_service(start, sidecar):
    """meshed_order_service(user_upstream) -> (order service, its sidecar): the order service calls the
    user service through Envoy, with the client settings it has in the cluster."""

    def _start(user_upstream):
        envoy = sidecar("user-svc", user_upstream)
        order = start("order-svc", USER_SVC_URL=envoy.url("outbound"), **order_client_settings())
        return order, envoy

    return _start


def place_order(order, user_id: int = 1) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(f"{order.url}/orders", json={"user_id": user_id, "items": ORDER_ITEMS}, timeout=10)
    return response, time.monotonic() - started


# --------------------------------------------------------------------------------------------
# order-svc -> user-svc (reads)
# --------------------------------------------------------------------------------------------


def test_a_failing_user_service_gets_the_documented_worst_case_within_the_deadline(meshed_order_service):
    reads = route_for(istio_object("virtualservices.yaml", "VirtualService", "user-svc"), "GET")
    assert retry_conditions(reads) & {"503", "5xx", "gateway-error"}, (
        "the worst case below needs the mesh to retry a 503"
    )
    mesh_retries = reads["retries"]["attempts"]
    client = order_client_settings()
    app_attempts, deadline = int(client["USER_SVC_ATTEMPTS"]), float(client["USER_SVC_DEADLINE"])
    worst_case = app_attempts * (1 + mesh_retries)
    istio_readme = (ROOT / "istio" / "README.md").read_text()
    assert f"= {app_attempts} × (1 + {mesh_retries}) = **{worst_case}**" in istio_readme
    assert f"at worst {worst_case} requests reach the user service" in (ROOT / "README.md").read_text()

    with ScriptedServer([respond(503)]) as user_service:
        order, envoy = meshed_order_service(user_service.url)
        response, elapsed = place_order(order)

        assert response.status_code == 503, response.text
        assert response.json() == {"detail": "The user service is unavailable; the order was not stored."}
        assert elapsed < deadline, f"answered after {elapsed:.2f}s, past the {deadline}s deadline"
        assert len(user_service.requests) == worst_case
        assert {(r.method, r.path) for r in user_service.requests} == {("GET", "/users/1")}
        # Envoy's view: one request per app attempt, each tried 1 + retries times, then given up.
        lines = envoy.wait_for_access_records(lambda records: len(records) >= app_attempts)
        assert [(r["status"], r["attempts"]) for r in lines] == [(503, 1 + mesh_retries)] * app_attempts
        assert all("URX" in r["flags"] for r in lines), lines  # URX: retry limit exceeded
        assert envoy.stat("cluster.user-svc.upstream_rq_retry") == app_attempts * mesh_retries
        assert envoy.stat("cluster.user-svc.upstream_rq_retry_limit_exceeded") == app_attempts
        # Outlier detection never ejected the failing host: with one replica, maxEjectionPercent < 100
        # keeps the only host in, so the worst case is reached (with more, ejection can only lower it).
        assert envoy.stat("cluster.user-svc.outlier_detection.ejections_enforced_total") == 0


def test_the_mesh_absorbs_transient_failures_so_the_app_does_not_retry(start, meshed_order_service):
    reads = route_for(istio_object("virtualservices.yaml", "VirtualService", "user-svc"), "GET")
    mesh_retries = reads["retries"]["attempts"]
    user = start("user-svc")
    user_id = requests.post(f"{user.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=5).json()[
        "id"
    ]

    # Fails as often as the mesh retries, then answers for real: one app attempt is enough.
    with ScriptedServer([respond(503)] * mesh_retries + [proxy(user.url)]) as flaky_user_service:
        order, envoy = meshed_order_service(flaky_user_service.url)
        before = scrape(order.url)
        response, _ = place_order(order, user_id)

        assert response.status_code == 201, response.text
        assert len(flaky_user_service.requests) == 1 + mesh_retries
        assert value(scrape(order.url), "user_check_retries_total") == value(before, "user_check_retries_total")
        (line,) = envoy.wait_for_access_records(lambda records: len(records) >= 1)
        assert (line["status"], line["attempts"]) == (200, 1 + mesh_retries)
        assert envoy.stat("cluster.user-svc.upstream_rq_retry_success") == 1


def test_an_unknown_user_is_asked_once(meshed_order_service):
    with ScriptedServer([respond(404, {"detail": "User 1 not found"})]) as user_service:
        order, envoy = meshed_order_service(user_service.url)
        response, _ = place_order(order)

        assert response.status_code == 404, response.text
        assert len(user_service.requests) == 1  # neither Envoy nor the app retries a 404
        assert envoy.stat("cluster.user-svc.upstream_rq_retry") == 0


def test_a_slow_user_service_is_cut_by_the_sidecar_before_the_app_times_out(meshed_order_service):
    """Slower than perTryTimeout but faster than the app's read timeout: without the mesh the app would
    wait for the answer; with it the sidecar answers 504 first, and the order still gets its 503 within
    the deadline."""
    reads = route_for(istio_object("virtualservices.yaml", "VirtualService", "user-svc"), "GET")
    per_try = parse_duration(reads["retries"]["perTryTimeout"])
    route_timeout = parse_duration(reads["timeout"])
    client = order_client_settings()
    app_attempts, deadline = int(client["USER_SVC_ATTEMPTS"]), float(client["USER_SVC_DEADLINE"])
    read_timeout = float(client["USER_SVC_READ_TIMEOUT"])
    assert per_try < read_timeout
    delay = (per_try + read_timeout) / 2
    # Envoy retries a try that ran past perTryTimeout only under 5xx/gateway-error/reset (the reads'
    # retryOn has gateway-error); without them each app attempt would be one try.
    mesh_tries = 1 + reads["retries"]["attempts"] if retry_conditions(reads) & TIMEOUT_RETRY_CONDITIONS else 1

    with ScriptedServer([respond(200, {"id": 1}, delay=delay)]) as slow_user_service:
        order, envoy = meshed_order_service(slow_user_service.url)
        response, elapsed = place_order(order)

        assert response.status_code == 503, response.text
        # Each app attempt here takes the whole route timeout, so the user check runs up to its
        # deadline (USER_SVC_DEADLINE bounds the check, retries and backoff included); the answer
        # then crosses the order service and the test's client: 3.02 s on a loaded machine. The
        # same allowance as tests/e2e/test_services.py's hanging user service.
        assert elapsed < deadline + ANSWER_AFTER_DEADLINE, f"answered after {elapsed:.2f}s, deadline {deadline}s"
        lines = envoy.wait_for_access_records(lambda records: len(records) >= app_attempts)
        assert len(lines) == app_attempts, lines
        # Three route timeouts and two backoffs leave the check about 50 ms of its deadline: on a
        # loaded machine the deadline may end the last attempt a moment before the sidecar's 504.
        # The app then closes its side of that request: Envoy logs status 0, downstream closed (DC;
        # seen with USER_SVC_DEADLINE=2.75), and that attempt may not have made all its tries.
        tries = len(slow_user_service.requests)
        if lines[-1]["status"] == 0 and "DC" in lines[-1]["flags"]:
            cut_by_deadline = lines.pop()
            assert cut_by_deadline["duration_ms"] <= route_timeout * 1000 + 50, cut_by_deadline
            assert len(lines) * mesh_tries < tries <= app_attempts * mesh_tries
        else:
            assert tries == app_attempts * mesh_tries
        assert [r["status"] for r in lines] == [504] * len(lines), lines
        assert all("UT" in r["flags"] for r in lines), lines  # UT: upstream request timeout
        for line in lines:  # the sidecar gave up by the route timeout, before the app's read timeout
            assert line["duration_ms"] <= route_timeout * 1000 + 50 and line["duration_ms"] < read_timeout * 1000, lines
        # every try the sidecar answered ended by a timeout: perTryTimeout, or the route timeout
        # where the last try meets it
        timed_out = envoy.stat("cluster.user-svc.upstream_rq_per_try_timeout") + envoy.stat(
            "cluster.user-svc.upstream_rq_timeout"
        )
        assert len(lines) * mesh_tries <= timed_out <= app_attempts * mesh_tries


# --------------------------------------------------------------------------------------------
# caller -> order-svc (writes are never replayed)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [respond(503), drop()], ids=["answers-503", "drops-the-connection"])
def test_a_post_that_reached_the_order_service_is_never_replayed(sidecar, failure):
    virtual_service = istio_object("virtualservices.yaml", "VirtualService", "order-svc")
    reads, writes = route_for(virtual_service, "GET"), route_for(virtual_service, "POST")
    assert writes is not reads
    with ScriptedServer([failure]) as order_service:
        envoy = sidecar("order-svc", order_service.url)
        response = requests.post(
            f"{envoy.url('outbound')}/orders", json={"user_id": 1, "items": ORDER_ITEMS}, timeout=10
        )

        assert response.status_code == 503, response.text
        assert [(r.method, r.path) for r in order_service.requests] == [("POST", "/orders")]
        assert envoy.stat("cluster.order-svc.upstream_rq_retry") == 0

        # The same sidecar does retry a read that fails the same way (so the POST above was not
        # retried because of its route, not because retries are off).
        if not failure.drop:
            assert requests.get(f"{envoy.url('outbound')}/orders/1", timeout=10).status_code == 503
            assert len(order_service.requests) == 1 + (1 + reads["retries"]["attempts"])


def test_a_post_that_could_not_connect_is_retried(sidecar):
    writes = route_for(istio_object("virtualservices.yaml", "VirtualService", "order-svc"), "POST")
    assert "connect-failure" in retry_conditions(writes)
    retries = writes["retries"]["attempts"]
    # A bound socket that never listens: every connect is refused, and no other process can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        envoy = sidecar("order-svc", closed.getsockname()[1])
        response = requests.post(
            f"{envoy.url('outbound')}/orders", json={"user_id": 1, "items": ORDER_ITEMS}, timeout=10
        )

        assert response.status_code == 503, response.text
        assert envoy.stat("cluster.order-svc.upstream_cx_connect_fail") == 1 + retries
        assert envoy.stat("cluster.order-svc.upstream_rq_retry") == retries
        (line,) = envoy.wait_for_access_records(lambda records: len(records) >= 1)
        assert line["attempts"] == 1 + retries
        assert "UF" in line["flags"] and "URX" in line["flags"], line  # connect failure, retries exhausted


class ClosingRelay:
    """A TCP relay in front of a service that, once armed, closes the next pooled connection (one that
    already carried a request) the moment the next request's first bytes arrive, without passing them
    on: what a server closing an idle keep-alive connection does to a request crossing its FIN."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.closed = 0
        self._sockets = []
        self._armed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self._armed.set()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [downstream, upstream]
            answered = threading.Event()
            threading.Thread(target=self._pump, args=(upstream, downstream, answered), daemon=True).start()
            threading.Thread(target=self._requests, args=(downstream, upstream, answered), daemon=True).start()

    @staticmethod
    def _pump(source, sink, answered) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                answered.set()
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _requests(self, downstream, upstream, answered) -> None:
        with contextlib.suppress(OSError):
            while data := downstream.recv(65536):
                if answered.is_set() and self._armed.is_set():
                    self._armed.clear()
                    self.closed += 1
                    # unread bytes + SO_LINGER 0: the client gets a reset, as from a closed socket
                    downstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    downstream.close()
                    upstream.close()
                    return
                upstream.sendall(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # the service's graceful stop would otherwise wait for the relayed keep-alive connections
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_pooled_connection_closed_as_a_post_is_sent_is_retried_once_with_an_idempotency_key(start, sidecar):
    """Envoy had written the POST when the connection died: only a reset after sending can tell, and
    reset-before-request does not cover it (Envoy retries it only if no byte went upstream). With an
    Idempotency-Key the route retries any reset, and the service stores one order."""
    virtual_service = istio_object("virtualservices.yaml", "VirtualService", "order-svc")
    keyed = next(r for r in virtual_service["spec"]["http"] if r.get("name") == "idempotent-writes")
    assert retry_conditions(keyed) == {"connect-failure", "reset"}
    user = start("user-svc")
    order = start("order-svc", USER_SVC_URL=user.url)
    user_id = requests.post(f"{user.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=5).json()[
        "id"
    ]
    body = {"user_id": user_id, "items": ORDER_ITEMS}

    def stored() -> int:
        listed = requests.get(f"{order.url}/orders", params={"user_id": user_id}, timeout=5).json()
        return len(listed["results"] if isinstance(listed, dict) else listed)

    with ClosingRelay(order.port) as relay:
        envoy = sidecar("order-svc", relay.port)
        url = f"{envoy.url('outbound')}/orders"
        assert requests.get(url, timeout=5).status_code == 200  # leaves a connection in Envoy's pool
        relay.arm()
        response = requests.post(url, json=body, headers={"Idempotency-Key": "pooled-race-1"}, timeout=10)

        assert response.status_code == 201, response.text
        assert relay.closed == 1
        assert envoy.stat("cluster.order-svc.upstream_rq_retry") == 1
        assert envoy.stat("cluster.order-svc.upstream_cx_destroy_remote_with_active_rq") == 1
        post = envoy.wait_for_access_records(lambda rs: any(r["method"] == "POST" for r in rs))[-1]
        assert (post["status"], post["attempts"]) == (201, 2), post
        assert stored() == 1

        # The same race without a key is not retried: the order may have been read, so it is not replayed.
        relay.arm()
        response = requests.post(url, json=body, timeout=10)
        assert response.status_code == 503, response.text
        assert relay.closed == 2
        assert envoy.stat("cluster.order-svc.upstream_rq_retry") == 1
        assert stored() == 1
        print(
            "\npooled connection closed as a POST is sent: with key 1 retry, 201, 1 order; without key 503, 0 retries"
        )
