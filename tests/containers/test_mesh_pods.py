"""The Istio data plane rehearsed in Docker (mesh_rehearsal): our two images as pods with captured
traffic and Envoy sidecars, configured from istio/ and k8s/ as istiod would, checked through HTTP and
sockets from the pods themselves.

One mesh for the module (STRICT, as istio/peerauthentication.yaml says): two replicas of each service,
PostgreSQL outside the mesh, the ``sleep`` (in the mesh) and ``outsider`` (no sidecar) client pods, the
ingress gateway and Prometheus on loopback, an OTLP receiver on the network's bridge. Tests that change
the mesh (an identity, a sidecar's mode, a stopped pod) put it back before they end.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import containers_support as cs
import pytest

from mesh_rehearsal import capture, runtime
from mesh_rehearsal.otlp_receiver import OtlpReceiver
from tests.observability.dashboards import iter_targets, load_dashboards, substitute

USER = "http://user-svc.meshed.svc.cluster.local"
ORDER = "http://order-svc.meshed.svc.cluster.local"
ORDER_PRINCIPAL = "spiffe://cluster.local/ns/meshed/sa/order-svc"
USER_PRINCIPAL = "spiffe://cluster.local/ns/meshed/sa/user-svc"
PEN = {"sku": "PEN", "quantity": 1, "unit_price": "1.00"}
GATEWAY_PRINCIPAL = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"

# Run inside a pod (python of the app or client image): each request spec -> status, body, headers.
PROBE = r"""
import json, sys, time, urllib.error, urllib.request
results = []
for spec in json.loads(sys.argv[1]):
    body = json.dumps(spec["json"]).encode() if "json" in spec else None
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    request = urllib.request.Request(spec["url"], data=body, method=spec.get("method", "GET"), headers=headers)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=spec.get("timeout", 10)) as response:
            status, text, answer = response.status, response.read().decode(errors="replace"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, text, answer = exc.code, exc.read().decode(errors="replace"), dict(exc.headers)
    except OSError as exc:
        status, text, answer = None, repr(exc), {}
    results.append({"status": status, "body": text, "headers": answer, "seconds": time.monotonic() - started})
print(json.dumps(results))
"""


def probe(mesh, pod: str, *specs: dict) -> list[dict]:
    result = mesh.exec(pod, ["python3", "-c", PROBE, json.dumps(list(specs))], timeout=120)
    return json.loads(result.stdout)


def get(url: str, **extra) -> dict:
    return {"url": url, **extra}


def host_request(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def order_through_gateway(mesh, user_id: int, headers: dict | None = None):
    """POST /orders for ``user_id`` as a client outside the cluster sends it: (status, body)."""
    return host_request(
        f"{mesh.state.gateway_url}/orders", "POST", {"user_id": user_id, "items": [PEN]}, headers=headers
    )


def access_records(mesh, pod: str) -> list[dict]:
    """The JSON access lines of the pod's sidecar (its stdout)."""
    logs = cs.docker("logs", mesh.state.container(pod, "istio-proxy"))
    return [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]


def app_records(mesh, pod: str) -> list[dict]:
    logs = cs.docker("logs", mesh.state.container(pod))
    return [json.loads(line) for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("{")]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def mesh(images, tmp_path_factory, figures):
    started = time.monotonic()
    client_image = runtime.build_client_image(images["BASE_IMAGE"])
    receiver: list[OtlpReceiver] = []

    def start_collector(address: str) -> int:
        receiver.append(OtlpReceiver(host=address).__enter__())
        return receiver[0].port

    mesh = runtime.Mesh(
        tmp_path_factory.mktemp("run") / "mesh",  # $RUN_DIR/mesh, where ./manage_all.sh mesh looks
        {**images, "CLIENT_IMAGE": client_image},
        start_collector=start_collector,
    )
    try:
        mesh.up()
        figures(f"mesh up (6 pods, gateway, Prometheus): {time.monotonic() - started:.1f} s")
        mesh.receiver = receiver[0]
        yield mesh
    finally:
        torn_down = time.monotonic()
        mesh.down()
        for r in receiver:
            r.__exit__(None, None, None)
        figures(f"mesh down: {time.monotonic() - torn_down:.1f} s")
        left = cs.docker("ps", "-aq", "--filter", f"label={runtime.LABEL}={mesh.prefix}").stdout.split()
        networks = cs.docker("network", "ls", "-q", "--filter", f"label={runtime.LABEL}={mesh.prefix}").stdout.split()
        assert not left and not networks and not mesh.run_dir.exists(), (left, networks)


@pytest.fixture(scope="module")
def ada(mesh):
    """A user created through the gateway (PostgreSQL, shared by both replicas)."""
    status, body = host_request(
        f"{mesh.state.gateway_url}/users", "POST", {"name": "Ada", "email": f"ada-{uuid.uuid4().hex[:8]}@example.com"}
    )
    assert status == 201, body
    return json.loads(body)["id"]


# --- isolation ------------------------------------------------------------------------------------


def test_the_pods_network_is_internal_and_its_addresses_its_own(mesh):
    (network,) = json.loads(cs.docker("network", "inspect", f"{mesh.prefix}-net").stdout)
    assert network["Internal"] is True  # no route out, no masquerade: nothing leaves even without capture
    subnet = ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])
    assert subnet == ipaddress.ip_network(mesh.state.subnet) and subnet.subnet_of(runtime.SUPERNET)
    addresses = [p.address for p in mesh.state.pods] + list(mesh.state.service_addresses.values())
    assert all(ipaddress.ip_address(a) in subnet for a in addresses), addresses
    # Only the gateway and Prometheus listen for the host, on loopback (host network, 127.0.0.1).
    for name in ("istio-ingressgateway", "prometheus"):
        container = json.loads(cs.docker("inspect", f"{mesh.prefix}-{name}").stdout)[0]
        assert container["HostConfig"]["NetworkMode"] == "host" and not container["HostConfig"]["PortBindings"]
    assert mesh.state.gateway_url.startswith("http://127.0.0.1:") and mesh.state.prometheus_url.startswith(
        "http://127.0.0.1:"
    )
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    for port in (mesh.state.gateway_port, mesh.state.prometheus_port, *mesh.state.gateway_ports.values()):
        bound = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        assert bound == [f"127.0.0.1:{port}"], bound


# --- capture --------------------------------------------------------------------------------------


def test_each_pod_nat_table_is_what_istio_iptables_writes(mesh, figures):
    expected = capture.canonical(capture.nat_rules())
    rules = sum(len(chain) for chain in expected.values())
    figures(f"mesh: nat table of 5 sidecar pods = istio-iptables' {len(expected)} chains, {rules} rules; outsider none")
    for pod in mesh.state.pods:
        saved = capture.saved_nat_rules(mesh.pid(pod.name))
        if pod.sidecar:
            assert capture.canonical(saved) == expected, pod.name
        else:
            assert not [rule for rule in saved if "ISTIO" in rule], f"{pod.name} has no sidecar and no capture"


def test_the_sidecar_runs_as_1337_with_no_capabilities(mesh):
    for pod in (p for p in mesh.state.pods if p.sidecar):
        status = cs.docker("exec", mesh.state.container(pod.name, "istio-proxy"), "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[:2] == ["1337", "1337"], pod.name
        assert fields["CapEff"].strip() == "0" * 16 and fields["CapPrm"].strip() == "0" * 16, pod.name


# --- mTLS, identities, capture paths ----------------------------------------------------------------


def test_order_reaches_user_by_cluster_name_and_user_sees_127_0_0_6_and_both_identities(mesh, ada, figures):
    marker = uuid.uuid4().hex
    (answer,) = probe(mesh, "order-svc-0", get(f"{USER}/users/{ada}?probe={marker}"))
    assert answer["status"] == 200, answer
    assert json.loads(answer["body"])["id"] == ada
    # The user pod's sidecar forwarded it with the caller's certificate in x-forwarded-client-cert.
    (record,) = wait_until(
        lambda: [
            r
            for pod in ("user-svc-0", "user-svc-1")
            for r in access_records(mesh, pod)
            if marker in r["path"] and r["upstream_cluster"] == "inbound|8000||"
        ],
        5,
        "the user sidecar's access line",
    )
    xfcc = record["x_forwarded_client_cert"]
    assert f"By={USER_PRINCIPAL}" in xfcc and f"URI={ORDER_PRINCIPAL}" in xfcc, xfcc
    assert record["upstream_local_address"].startswith("127.0.0.6:"), record
    assert record["requested_server_name"] == "outbound_.80_.v1_.user-svc.meshed.svc.cluster.local", record
    # The app itself saw the connection come from 127.0.0.6 (its own access line's peer).
    peers = {
        r["peer"]
        for pod in ("user-svc-0", "user-svc-1")
        for r in app_records(mesh, pod)
        if r.get("path") == f"/users/{ada}" and r.get("method") == "GET"
    }
    assert peers == {"127.0.0.6"}, peers
    figures(f"mesh: order-svc-0 -> user-svc: 200, app peer {peers}, XFCC {xfcc}")


def test_plaintext_to_the_app_port_from_outside_the_mesh_is_refused_under_strict(mesh, figures):
    target = mesh.state.pod("user-svc-0").address
    answers = probe(mesh, "outsider", get(f"http://{target}:8000/users"), get(f"http://{target}:8000/metrics"))
    figures(f"mesh: outsider plaintext to :8000/users and /metrics under STRICT: {[a['body'] for a in answers]}")
    for answer in answers:
        assert answer["status"] is None, answer  # the connection is closed: no HTTP answer at all
        assert "reset" in answer["body"].lower() or "closed" in answer["body"].lower(), answer


def test_the_sidecar_ports_15090_and_15021_answer_plaintext(mesh, figures):
    target = mesh.state.pod("user-svc-0").address
    stats, health = probe(
        mesh, "outsider", get(f"http://{target}:15090/stats/prometheus"), get(f"http://{target}:15021/healthz/ready")
    )
    assert stats["status"] == 200 and "envoy_server_live" in stats["body"], stats["body"][:300]
    assert health["status"] == 200, health
    figures(
        f"mesh: outsider plaintext: :15090/stats/prometheus {stats['status']}, :15021/healthz/ready {health['status']}"
    )


def test_postgresql_traffic_bypasses_envoy(mesh, ada):
    # Reads spread over both replicas (LEAST_REQUEST), each reading PostgreSQL.
    for answer in probe(mesh, "order-svc-0", *[get(f"{USER}/users/{ada}") for _ in range(8)]):
        assert answer["status"] == 200, answer
    for pod in ("user-svc-0", "user-svc-1"):
        sockets = mesh.in_pod_namespace(pod, ["ss", "-Htnep", "state", "established", "dport", "= :5432"])
        assert f"{mesh.state.postgres_address}:5432" in sockets, sockets
        # The app's own connections (gunicorn, uid 10001) go straight to the database, none from Envoy.
        assert set(re.findall(r"uid:(\d+)", sockets)) == {"10001"}, sockets
        assert "gunicorn" in sockets and "envoy" not in sockets, sockets
    # And the sidecar's own accounting never saw a connection on 5432: no listener, no cluster for it.
    assert ":5432" not in mesh.sidecar_admin("user-svc-0", "/clusters")


# --- authorization -----------------------------------------------------------------------------------


def test_order_svc_may_only_read_users(mesh, ada, figures):
    read, create, delete = probe(
        mesh,
        "order-svc-0",
        get(f"{USER}/users/{ada}"),
        get(f"{USER}/users", method="POST", json={"name": "Eve", "email": "eve@example.com"}),
        get(f"{USER}/users/{ada}", method="DELETE"),
    )
    assert read["status"] == 200, read
    assert (create["status"], create["body"]) == (403, "RBAC: access denied"), create
    assert (delete["status"], delete["body"]) == (403, "RBAC: access denied"), delete
    figures(f"mesh: from order-svc-0: GET {read['status']}, POST {create['status']}, DELETE {delete['status']}")


def test_sleep_is_denied_everything(mesh, ada, figures):
    answers = probe(
        mesh,
        "sleep",
        get(f"{USER}/users/{ada}"),
        get(f"{USER}/users"),
        get(f"{USER}/users", method="POST", json={"name": "Eve", "email": "eve@example.com"}),
        get(f"{ORDER}/orders"),
        get(f"{ORDER}/orders", method="POST", json={"user_id": ada, "items": []}),
    )
    assert [a["status"] for a in answers] == [403] * 5, answers
    figures(f"mesh: from sleep, 5 calls to user-svc and order-svc: {[a['status'] for a in answers]}")


# --- the gateway ---------------------------------------------------------------------------------------


def test_the_gateway_serves_the_edge_routes_and_nothing_else(mesh, ada, figures):
    base = mesh.state.gateway_url
    status, body = host_request(
        f"{base}/orders", "POST", {"user_id": ada, "items": [{"sku": "BOOK", "quantity": 1, "unit_price": "9.99"}]}
    )
    assert status == 201, body
    for path in ("/users", f"/users/{ada}", f"/orders?user_id={ada}"):
        status, body = host_request(f"{base}{path}")
        assert status == 200, (path, body)
    assert json.loads(host_request(f"{base}/orders?user_id={ada}")[1])["count"] >= 1
    refused = {}
    for path in ("/metrics", "/healthz", "/readyz", "/docs/", "/schema/"):
        refused[path], _ = host_request(f"{base}{path}")
        assert refused[path] == 404, path
    figures(f"mesh: gateway /users, /users/{ada}, /orders?user_id={ada}: 200; outside the routes: {refused}")


# --- identity: a wrong one, then rotation ---------------------------------------------------------------


def served_identity(address: str) -> str:
    """The URI SAN of the certificate the pod's sidecar presents on its app port (read from the host)."""
    handshake = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:8000", "-alpn", "istio-peer-exchange,istio", "-showcerts"],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    )
    (pem,) = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", handshake.stdout, re.S)[:1]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem, capture_output=True, text=True
    )
    return re.search(r"URI:(\S+)", text.stdout).group(1)


def test_a_pod_with_the_wrong_identity_fails_the_callers_san_check_and_rotation_needs_no_restart(mesh, ada, figures):
    pods = ("user-svc-0", "user-svc-1")
    # The caller keeps the connections it verified before; a fresh sidecar has none, so every call
    # below makes new ones and checks the certificate then (as a new pod of the caller would).
    mesh.restart_sidecar("order-svc-0")
    started = {
        p: runtime.docker("inspect", "-f", "{{.State.StartedAt}}", mesh.state.container(p, "istio-proxy")).stdout
        for p in pods
    }
    try:
        for pod in pods:
            mesh.write_identity(pod, "impostor")
        for pod in pods:
            wait_until(
                lambda pod=pod: served_identity(mesh.state.pod(pod).address).endswith("/sa/impostor"),
                10,
                f"{pod} serving the impostor certificate",
            )
        (answer,) = probe(mesh, "order-svc-0", get(f"{USER}/users/{ada}"))
        assert answer["status"] == 503, answer
        record = wait_until(
            lambda: [
                r
                for r in access_records(mesh, "order-svc-0")
                if r["path"] == f"/users/{ada}" and r["response_code"] == 503
            ],
            5,
            "the order sidecar's 503 line",
        )[-1]
        assert "UF" in record["response_flags"].split(","), record
        assert "SAN" in record["upstream_transport_failure_reason"].upper() or "CERTIFICATE" in (
            record["upstream_transport_failure_reason"].upper()
        ), record
        figures(
            f"mesh: user pods as sa/impostor: order-svc-0 got {answer['status']}, flags {record['response_flags']}, "
            f"{record['upstream_transport_failure_reason']}"
        )
    finally:
        for pod in pods:
            mesh.write_identity(pod, "user-svc")
    for pod in pods:
        wait_until(
            lambda pod=pod: served_identity(mesh.state.pod(pod).address) == USER_PRINCIPAL, 10, f"{pod} rotated back"
        )
    (answer,) = probe(mesh, "order-svc-0", get(f"{USER}/users/{ada}"))
    assert answer["status"] == 200, answer
    after = {
        p: runtime.docker("inspect", "-f", "{{.State.StartedAt}}", mesh.state.container(p, "istio-proxy")).stdout
        for p in pods
    }
    assert after == started  # served the new certificates without a restart
    figures("mesh: rotated back to sa/user-svc through the SDS files: 200, sidecars not restarted")


def test_permissive_accepts_plaintext_but_denies_it_for_want_of_a_principal(mesh, ada, figures):
    target = mesh.state.pod("user-svc-0").address
    try:
        mesh.restart_sidecar("user-svc-0", mtls_mode="PERMISSIVE")
        (answer,) = probe(mesh, "outsider", get(f"http://{target}:8000/users/{ada}"))
        assert (answer["status"], answer["body"]) == (403, "RBAC: access denied"), answer
        figures(f"mesh: outsider plaintext under PERMISSIVE: {answer['status']} {answer['body']!r}")
    finally:
        mesh.restart_sidecar("user-svc-0")
    (answer,) = probe(mesh, "outsider", get(f"http://{target}:8000/users/{ada}"))
    assert answer["status"] is None, answer


# --- the resilience proofs, through captured sidecars -------------------------------------------------

USER_V1 = "outbound|80|v1|user-svc.meshed.svc.cluster.local"


def stat_value(text: str) -> int:
    """The value in an Envoy admin ``/stats?filter=^name$`` answer ("name: 3"); 0 before it exists."""
    return int(text.split(":")[1]) if ":" in text else 0


def sidecar_counter(mesh, pod: str, name: str) -> int:
    return stat_value(mesh.sidecar_admin(pod, f"/stats?filter=^{re.escape(name)}$"))


@contextlib.contextmanager
def paused(*containers: str):
    """The containers frozen for the block: their sockets accept (the kernel does), nothing answers."""
    for container in containers:
        cs.docker("pause", container)
    try:
        yield
    finally:
        for container in containers:
            cs.docker("unpause", container)


def test_a_hanging_pod_costs_one_per_try_timeout_then_the_retry_answers(mesh, ada, figures):
    frozen = mesh.state.container("user-svc-1")
    timeouts = f"cluster.{USER_V1}.upstream_rq_per_try_timeout"
    before = sidecar_counter(mesh, "order-svc-0", timeouts)
    with paused(frozen):
        answers = probe(mesh, "order-svc-0", *[get(f"{USER}/users/{ada}") for _ in range(10)])
    assert [a["status"] for a in answers] == [200] * 10, answers
    timed_out = sidecar_counter(mesh, "order-svc-0", timeouts) - before
    # A try that hung cost 0.3 s (perTryTimeout), then a retry on the other pod answered: the requests
    # that met the frozen pod took at least that, and none ran into the route's 0.9 s timeout.
    slow = [a["seconds"] for a in answers if a["seconds"] >= 0.3]
    slowest = max(a["seconds"] for a in answers)
    figures(
        f"mesh: 10 GETs with user-svc-1 frozen: all 200, {timed_out} per-try timeouts, "
        f"{len(slow)} answers took >= 0.3 s, slowest {slowest:.2f} s"
    )
    assert 1 <= len(slow) <= timed_out <= 2 * len(answers)


def test_a_pod_that_refuses_connections_is_ejected_and_retried_around(mesh, ada, figures):
    proxy = mesh.state.container("user-svc-1", "istio-proxy")
    address = mesh.state.pod("user-svc-1").address

    def ejected() -> list[str]:
        lines = mesh.sidecar_admin("order-svc-0", "/clusters").splitlines()
        prefix = f"{USER_V1}::{address}:8000::health_flags"
        return [line for line in lines if line.startswith(prefix) and "failed_outlier_check" in line]

    assert not ejected()  # not before: what follows ejects it
    cs.docker("stop", "-t", "1", proxy)  # the capture still redirects to 15006, where nothing listens
    try:
        answers = probe(mesh, "order-svc-0", *[get(f"{USER}/users/{ada}") for _ in range(20)])
        clusters = mesh.sidecar_admin("order-svc-0", "/clusters")
    finally:
        cs.docker("start", proxy)
        mesh.wait_ready(mesh.state.pod("user-svc-1"))
    assert [a["status"] for a in answers] == [200] * 20, answers
    flags = [line for line in clusters.splitlines() if line.startswith(f"{USER_V1}::{address}:8000::health_flags")]
    retries = sidecar_counter(mesh, "order-svc-0", f"cluster.{USER_V1}.upstream_rq_retry")
    figures(f"mesh: 20 GETs with user-svc-1's sidecar stopped: all 200; {flags}; retries so far {retries}")
    assert flags and "failed_outlier_check" in flags[0], flags


# --- Istio's metrics, scraped by a real Prometheus ---------------------------------------------------


def prometheus_query(mesh, expr: str) -> list[dict]:
    url = f"{mesh.state.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_every_mesh_dashboard_query_returns_series_with_istio_labels(mesh, ada, figures):
    # Traffic of every kind the dashboard shows: gateway -> order -> user, order -> user, a 403.
    for _ in range(3):
        status, body = order_through_gateway(mesh, ada)
        assert status == 201, body
    (denied,) = probe(mesh, "sleep", get(f"{USER}/users/{ada}"))
    assert denied["status"] == 403
    dashboard = load_dashboards()["mesh"]
    queries = [(panel["title"], substitute(target["expr"])) for _, panel, target in iter_targets(dashboard)]
    assert queries
    started = time.monotonic()
    for title, expr in queries:
        grouped = re.search(r"by \(([^)]*)\)", expr).group(1)
        labels = [name.strip() for name in grouped.split(",") if name.strip() != "le"]

        def labelled_series(expr=expr, labels=labels):
            return [s for s in prometheus_query(mesh, expr) if all(s["metric"].get(name) for name in labels)]

        series = wait_until(labelled_series, 30, f"{title}: {expr} returning series labelled {labels}", 1.0)
        assert series, title
    waited = time.monotonic() - started
    figures(f"mesh: {len(queries)} mesh.json queries answered with labelled series within {waited:.0f} s")
    for expr, what in (
        (
            'istio_requests_total{reporter="destination", destination_workload="user-svc", source_workload="sleep", '
            'source_principal="spiffe://cluster.local/ns/meshed/sa/sleep", response_code="403"}',
            "user-svc's sidecar counts sleep's denied call as a 403",
        ),
        (
            'istio_requests_total{reporter="source", source_workload="istio-ingressgateway", '
            'destination_workload="order-svc", destination_principal="spiffe://cluster.local/ns/meshed/sa/order-svc"}',
            "the gateway reports its calls as reporter=source, with the callee's identity",
        ),
        (
            f'istio_requests_total{{reporter="destination", destination_workload="order-svc", '
            f'source_workload="istio-ingressgateway", source_principal="{GATEWAY_PRINCIPAL}", response_code="201"}}',
            "order-svc's sidecar reports the gateway's calls by its identity",
        ),
    ):
        wait_until(lambda expr=expr: prometheus_query(mesh, expr), 15, what, 1.0)


def test_the_apps_own_metrics_reach_prometheus_through_metrics_merging_under_strict(mesh):
    # The pods' annotations point at the app's :8000/metrics; the injector moves them to 15020, where
    # the agent merges the app's metrics with Envoy's. (A plaintext scrape of :8000 is refused: above.)
    series = wait_until(
        lambda: prometheus_query(mesh, 'app_build_info{namespace="meshed"}'), 15, "the apps' app_build_info", 1.0
    )
    assert sorted(s["metric"]["pod"] for s in series) == ["order-svc-0", "order-svc-1", "user-svc-0", "user-svc-1"]
    assert {s["metric"]["service"] for s in series} == {"user-svc", "order-svc"}, series
    merged = prometheus_query(mesh, 'istio_requests_total{pod="user-svc-0"}')
    assert merged, "Envoy's metrics come from the same scrape"


# --- traces through every hop ----------------------------------------------------------------------------


def test_one_request_through_the_gateway_is_one_trace_over_every_hop(mesh, ada, figures):
    receiver = mesh.receiver
    trace_id = uuid.uuid4().hex
    # x-client-trace-id forces the gateway's decision (client_sampling 100 %), whatever the 10 % says.
    status, body = order_through_gateway(mesh, ada, headers={"x-client-trace-id": trace_id})
    assert status == 201, body
    expected = {
        ("istio-ingressgateway.istio-system", "CLIENT"),
        ("order-svc.meshed", "SERVER"),
        ("order-svc.meshed", "CLIENT"),
        ("user-svc.meshed", "SERVER"),
        ("order-svc", "SERVER"),
        ("order-svc", "CLIENT"),
        ("user-svc", "SERVER"),
    }

    def one_trace():
        spans = receiver.snapshot()
        gateway = [s for s in spans if s.service == "istio-ingressgateway.istio-system" and s.parent_span_id == ""]
        for root in gateway:
            joined = [s for s in spans if s.trace_id == root.trace_id]
            if expected <= {(s.service, s.kind) for s in joined}:
                return joined
        return None

    spans = wait_until(one_trace, 15, "one trace from the gateway through both sidecars and both apps", 0.5)
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        assert span.parent_span_id == "" or span.parent_span_id in by_id, f"{span.service} {span.name} has no parent"
    figures(
        f"mesh: one gateway request, one trace of {len(spans)} spans: {sorted({(s.service, s.kind) for s in spans})}"
    )


def test_at_zero_percent_sampling_at_the_gateway_no_sidecar_span_is_exported(mesh, ada):
    receiver = mesh.receiver
    try:
        mesh.start_gateway(sampling=0.0)
        before = len(receiver.snapshot())
        for _ in range(5):
            status, body = order_through_gateway(mesh, ada)
            assert status == 201, body
        time.sleep(2.0)  # the tracers flush every 100 ms, the apps' exporters every 200 ms
        assert receiver.snapshot()[before:] == []
    finally:
        mesh.start_gateway()


# --- the command -------------------------------------------------------------------------------------------


def manage_mesh(mesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cs.REPO_ROOT / "manage_all.sh"), "mesh", *args],
        env={**os.environ, "RUN_DIR": str(mesh.run_dir.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_manage_all_mesh_status_lists_the_pods_and_exec_runs_in_a_pod(mesh, ada):
    status = manage_mesh(mesh, "status")
    assert status.returncode == 0, status.stderr
    for pod in mesh.state.pods:
        assert f"{mesh.state.container(pod.name)}\tUp" in status.stdout, status.stdout
    assert mesh.state.gateway_url in status.stdout and mesh.state.prometheus_url in status.stdout
    denied = manage_mesh(
        mesh, "exec", "sleep", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{USER}/users"
    )
    assert (denied.returncode, denied.stdout) == (0, "403"), denied.stderr
    read = manage_mesh(
        mesh,
        "exec",
        "order-svc-0",
        "--",
        "python",
        "-c",
        f"import urllib.request as u; print(u.urlopen('{USER}/users/{ada}').status)",
    )
    assert read.stdout.strip() == "200", read.stderr
    unknown = manage_mesh(mesh, "exec", "nginx", "--", "true")
    assert unknown.returncode == 2 and "no pod" in unknown.stderr


def test_the_retry_budget_holds_through_the_sidecars_when_the_user_service_hangs(mesh, ada, figures):
    # istio/README.md: at most 3 app attempts x (1 + 2 mesh retries) = 9 requests reach user-svc for
    # one order, each try cut at 0.3 s, and the order service answers 503 within its 3 s deadline.
    apps = [mesh.state.container(f"user-svc-{i}") for i in range(2)]
    tries = f"cluster.{USER_V1}.upstream_rq_total"

    def tries_so_far() -> int:
        return sum(sidecar_counter(mesh, f"order-svc-{i}", tries) for i in range(2))

    before = tries_so_far()
    with paused(*apps):  # both replicas accept and never answer
        started = time.monotonic()
        status, body = order_through_gateway(mesh, ada)
        elapsed = time.monotonic() - started
    reached = tries_so_far() - before
    figures(f"mesh: user-svc hung: POST /orders answered {status} in {elapsed:.2f} s; {reached} tries reached user-svc")
    assert status == 503, body
    assert reached == 9
    # 9 tries of 0.3 s at least; the order service's 3 s deadline (plus the hops) at most.
    assert 2.7 <= elapsed < 4.0


def test_a_post_that_reached_a_hung_pod_is_not_replayed(mesh, figures):
    # The edge's write route retries only connect-failure and reset-before-request: a POST whose bytes
    # went upstream is never sent again, even when it times out (istio/gateway.yaml, 5 s).
    apps = [mesh.state.container(f"user-svc-{i}") for i in range(2)]
    admin = f"http://127.0.0.1:{mesh.state.gateway_ports['admin']}"
    counter = f"cluster.{USER_V1}.upstream_rq_total"

    def gateway_tries() -> int:
        url = f"{admin}/stats?filter=^{urllib.parse.quote(re.escape(counter))}$"
        with urllib.request.urlopen(url, timeout=5) as response:
            return stat_value(response.read().decode())

    before = gateway_tries()
    email = f"once-{uuid.uuid4().hex[:8]}@example.com"
    with paused(*apps):
        started = time.monotonic()
        status, body = host_request(f"{mesh.state.gateway_url}/users", "POST", {"name": "Once", "email": email})
        elapsed = time.monotonic() - started
    tries = gateway_tries() - before
    figures(f"mesh: POST /users to hung pods: {status} after {elapsed:.2f} s, {tries} try")
    assert status == 504 and body == "upstream request timeout", body
    assert tries == 1
    assert 5.0 <= elapsed < 6.0  # the route's timeout, once
