"""Several replicas of each service behind the clusters istiod builds from istio/, with a real Envoy.

One Envoy plays the sidecars: listener ``to-order`` is a caller's outbound listener for order-svc,
listener ``to-user`` the order pods' outbound listener for user-svc; both are routed by
istio/virtualservices.yaml, and their clusters (replicas on loopback) carry the settings of
istio/destinationrules.yaml as istiod translates them (testsupport/envoy.py):

    test -> Envoy to-order -> order replicas (3) -> Envoy to-user -> user replicas (2)

Each user replica has its own in-memory store, so the test creates the same user on each of them.
"""

import os
import signal
import socket
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from testsupport.envoy import (
    bootstrap,
    cluster_from_destination_rule,
    http_listener,
    istio_object,
    parse_duration,
    routes_from_virtual_service,
    start_envoy,
)
from testsupport.services import free_port, start_service

ORDER_ITEMS = [{"sku": "BOOK-1", "quantity": 1, "unit_price": "9.99"}]
ORDER_REPLICAS = 3
USER_REPLICAS = 2


def sidecars_config(order_ports: list[int], user_ports: list[int], order_rule: dict | None = None) -> dict:
    order_rule = order_rule or istio_object("destinationrules.yaml", "DestinationRule", "order-svc")
    listeners = [
        http_listener(
            "to-order",
            routes_from_virtual_service(
                istio_object("virtualservices.yaml", "VirtualService", "order-svc"), "order-svc"
            ),
        )
    ]
    clusters = [cluster_from_destination_rule(order_rule, "order-svc", ports=order_ports)]
    if user_ports:
        listeners.append(
            http_listener(
                "to-user",
                routes_from_virtual_service(
                    istio_object("virtualservices.yaml", "VirtualService", "user-svc"), "user-svc"
                ),
            )
        )
        rule = istio_object("destinationrules.yaml", "DestinationRule", "user-svc")
        clusters.append(cluster_from_destination_rule(rule, "user-svc", ports=user_ports))
    return bootstrap(listeners, clusters, node_cluster="callers.meshed")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (gunicorn: the master and its workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(child) for child in children)
    return pids


@contextmanager
def stopped(service):
    """The replica stops answering: its processes are frozen (SIGSTOP). The kernel still accepts
    connections into the listen backlog, so callers connect and then wait, as with a hung pod."""
    pids = process_tree(service.process.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def service(running: ExitStack, name: str, log_dir: Path, **kwargs):
    """A service replica that ``running`` stops on exit."""
    replica = start_service(name, log_dir, **kwargs)
    running.callback(replica.stop)
    return replica


def order_rule() -> dict:
    return istio_object("destinationrules.yaml", "DestinationRule", "order-svc")


def test_load_spreads_and_a_replica_that_stops_answering_costs_no_read(tmp_path):
    outliers = order_rule()["spec"]["trafficPolicy"]["outlierDetection"]
    reads = next(r for r in istio_object("virtualservices.yaml", "VirtualService", "order-svc")["spec"]["http"])
    per_try = parse_duration(reads["retries"]["perTryTimeout"])
    with ExitStack() as running:
        users = [service(running, "user-svc", tmp_path) for _ in range(USER_REPLICAS)]
        ids = {
            requests.post(f"{u.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=5).json()["id"]
            for u in users
        }
        (user_id,) = ids
        order_ports = [free_port() for _ in range(ORDER_REPLICAS)]
        envoy = running.enter_context(
            start_envoy(sidecars_config(order_ports, [u.port for u in users]), tmp_path / "envoy")
        )
        orders = [
            service(running, "order-svc", tmp_path, port=port, env={"USER_SVC_URL": envoy.url("to-user")})
            for port in order_ports
        ]
        # Envoy stops first: gunicorn's graceful stop would wait for the sidecar's keep-alive connections.
        running.callback(envoy.stop)
        to_order = envoy.url("to-order")

        # Mixed load: every replica of both services gets some.
        failed = []
        for _ in range(4 * ORDER_REPLICAS):
            created = requests.post(f"{to_order}/orders", json={"user_id": user_id, "items": ORDER_ITEMS}, timeout=10)
            listed = requests.get(f"{to_order}/orders", timeout=10)
            failed += [r for r in (created, listed) if r.status_code >= 300]
        assert not failed, [(r.status_code, r.text) for r in failed]
        order_hosts, user_hosts = envoy.host_stats("order-svc"), envoy.host_stats("user-svc")
        assert all(order_hosts[p]["rq_total"] > 0 for p in order_ports), order_hosts
        assert all(user_hosts[u.port]["rq_total"] > 0 for u in users), user_hosts

        # One replica hangs (frozen: it accepts connections, never answers): each read sent there times
        # out after perTryTimeout and is retried on another replica (retryOn gateway-error). Envoy does
        # not eject it for that: with splitExternalLocalOriginErrors each successful connect resets the
        # local-origin count (outlier_detection_impl.cc putResultWithLocalExternalSplit); its readiness
        # probe takes it out of the endpoints instead.
        hung = orders[1]
        hung_reads, waited = 0, 0
        with stopped(hung):
            while waited < 2:  # the balancer picks at random among equals: read until two went there
                assert hung_reads < 40, "the hung replica never got a read"
                started = time.monotonic()
                response = requests.get(f"{to_order}/orders", timeout=10)
                hung_reads += 1
                waited += time.monotonic() - started >= per_try
                assert response.status_code == 200, response.text
        assert envoy.stat("cluster.order-svc.upstream_rq_per_try_timeout") == waited
        assert envoy.stat("cluster.order-svc.outlier_detection.ejections_enforced_total") == 0

        # The replica dies (still listed, as until the endpoints catch up): connections are refused,
        # each read is retried on another replica (connect-failure), and after
        # consecutiveLocalOriginFailures refusals Envoy ejects it.
        for pid in reversed(process_tree(hung.process.pid)):
            os.kill(pid, signal.SIGKILL)
        hung.process.wait()
        before = envoy.host_stats("order-svc")[hung.port]["cx_connect_fail"]
        deadline, sent = time.monotonic() + 20, 0
        while not envoy.host_stats("order-svc")[hung.port]["ejected"]:
            assert time.monotonic() < deadline, envoy.host_stats("order-svc")
            response = requests.get(f"{to_order}/orders", timeout=10)
            sent += 1
            assert response.status_code == 200, response.text
        refused = envoy.host_stats("order-svc")[hung.port]["cx_connect_fail"] - before
        # the count includes the hung replica's last timeout, if it came after its last connect
        assert 1 <= refused <= outliers["consecutiveLocalOriginFailures"]
        after = [requests.get(f"{to_order}/orders", timeout=10) for _ in range(10)]
        assert all(r.status_code == 200 for r in after), [r.status_code for r in after]
        assert envoy.host_stats("order-svc")[hung.port]["cx_connect_fail"] - before == refused, "ejected, still tried"
        assert envoy.stat("cluster.order-svc.outlier_detection.ejections_enforced_total") == 1
        assert (
            envoy.stat("cluster.order-svc.outlier_detection.ejections_enforced_consecutive_local_origin_failure") == 1
        )
        print(
            f"\nreplicas: {8 * ORDER_REPLICAS} mixed requests spread over {ORDER_REPLICAS} order and {USER_REPLICAS}"
            f" user replicas, 0 failed; hung replica: {hung_reads} reads, 0 failed, {waited} waited a per-try"
            f" timeout, 0 ejections; dead replica: {sent + 10} reads, 0 failed, {refused} refused, 1 ejection"
        )


def user_down_traffic(envoy, rounds: int, gets: int | None = None) -> tuple[list, list]:
    """``rounds`` POST /orders, then ``gets`` GET /orders (as many by default), through listener to-order;
    (POST answers, GET answers)."""
    url = f"{envoy.url('to-order')}/orders"
    posts = [requests.post(url, json={"user_id": 1, "items": ORDER_ITEMS}, timeout=10) for _ in range(rounds)]
    return posts, [requests.get(url, timeout=10) for _ in range(rounds if gets is None else gets)]


@pytest.fixture
def orders_without_user_service(tmp_path):
    """Two order replicas whose user service is down: a bound port that never listens (connection
    refused, and no other process can take the port)."""
    with ExitStack() as running, socket.socket() as down:
        down.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{down.getsockname()[1]}"
        yield [service(running, "order-svc", tmp_path, env={"USER_SVC_URL": url}) for _ in range(2)]


def test_with_the_user_service_down_no_order_replica_is_ejected(orders_without_user_service, tmp_path):
    ports = [o.port for o in orders_without_user_service]
    rounds = 8
    # LEAST_REQUEST between idle replicas picks at random: of 64 requests, one replica gets fewer than
    # a quarter about once in 40,000 runs (of 16 it was once in 50, and seen here). The extra requests
    # are GETs, which answer at once; the POSTs wait out the order service's retries.
    get_count = 8 * 8 - rounds
    with start_envoy(sidecars_config(ports, []), tmp_path / "envoy") as envoy:
        posts, gets = user_down_traffic(envoy, rounds, get_count)
        assert [r.status_code for r in posts] == [503] * rounds  # the order service's own answer
        assert [r.status_code for r in gets] == [200] * get_count
        assert envoy.stat("cluster.order-svc.outlier_detection.ejections_enforced_total") == 0
        assert not any(h["ejected"] for h in envoy.host_stats("order-svc").values())
        assert all(h["rq_total"] >= (rounds + get_count) // 4 for h in envoy.host_stats("order-svc").values())

    # The same traffic under the rule as it was (5xx and gateway errors eject): replicas are ejected,
    # so the check above can fail.
    before = order_rule()
    outliers = before["spec"]["trafficPolicy"]["outlierDetection"]
    for key in ("splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures", "consecutive5xxErrors"):
        outliers.pop(key, None)
    outliers.update(consecutive5xxErrors=5, consecutiveGatewayErrors=3)
    with start_envoy(sidecars_config(ports, [], order_rule=before), tmp_path / "envoy-before") as envoy:
        user_down_traffic(envoy, rounds)
        ejected = envoy.stat("cluster.order-svc.outlier_detection.ejections_enforced_total")
        assert ejected >= 1
    print(
        f"\nuser service down: {rounds + get_count} requests, 0 GET failed, 0 ejections; "
        f"old rule: {ejected} ejection(s)"
    )
