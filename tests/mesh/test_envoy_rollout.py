"""A rollout's pod termination, replayed on loopback with real Envoys and real order replicas.

Two order replicas (A, B), each a pod as Istio runs it with a classic sidecar: Envoy (listener
``inbound`` to the app, listener ``outbound`` to the user service, both as istiod builds them) and
the order service, whose user checks go through its own sidecar to a slow user service. A caller's
sidecar reaches the replicas through an EDS cluster built from istio/destinationrules.yaml.

Pod A is deleted at t = 0, and everything happens as the kubelet and pilot-agent do it, with the
durations of k8s/base/order-svc/deployment.yaml (read, never hard-coded), replayed at ``SCALE``:

- t = 0: istio-proxy gets SIGTERM (a classic sidecar has no preStop): pilot-agent drains the
  inbound listeners, then kills Envoy after ``terminationDrainDuration`` (pkg/envoy/agent.go).
  The app container runs its preStop sleep first, then gets SIGTERM: gunicorn finishes what is in
  flight within GUNICORN_GRACEFUL_TIMEOUT.
- the endpoint removal reaches the caller's sidecar (EDS) within the preStop sleep, which is what
  the sleep is for; here halfway through it.
- t = terminationGracePeriodSeconds: the kubelet kills what is left.

Under mixed load through the caller, and with one order sent straight to A just before its app
gets SIGTERM (a caller whose endpoints were not updated yet), nothing may fail. The same replay
with Istio's default terminationDrainDuration (5 s, as the pods had before) fails that order: the
proxy exits when the app's graceful period begins.
"""

import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
import yaml

from testsupport.envoy import (
    ISTIO_DEFAULT_TERMINATION_DRAIN_SECONDS,
    bootstrap,
    cluster_from_destination_rule,
    http_listener,
    inbound_route,
    istio_object,
    parse_duration,
    routes_from_virtual_service,
    start_envoy,
    static_cluster,
    write_eds,
)
from testsupport.scripted_server import ScriptedServer, Step
from testsupport.services import free_port, start_service

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "k8s" / "base" / "order-svc" / "deployment.yaml"
SCALE = 0.2  # one replayed second is five real ones
ORDER_ITEMS = [{"sku": "BOOK-1", "quantity": 1, "unit_price": "9.99"}]


def termination_settings() -> dict[str, float]:
    """What decides the order of a pod's shutdown, from the Deployment as written."""
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    pod = deployment["spec"]["template"]
    (app,) = [c for c in pod["spec"]["containers"] if c["name"] == "app"]
    command = app["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    env = {e["name"]: e["value"] for e in app["env"] if "value" in e}
    proxy_config = yaml.safe_load(pod["metadata"]["annotations"].get("proxy.istio.io/config", "")) or {}
    drain = proxy_config.get("terminationDrainDuration")
    return {
        "pre_stop": float(command[1]),
        "graceful": float(env["GUNICORN_GRACEFUL_TIMEOUT"]),
        "drain": parse_duration(drain) if drain else ISTIO_DEFAULT_TERMINATION_DRAIN_SECONDS,
        "grace_period": float(pod["spec"]["terminationGracePeriodSeconds"]),
    }


def user_check_delay() -> float:
    """Slow enough to keep orders in flight, fast enough for the mesh's perTryTimeout on user reads."""
    reads = istio_object("virtualservices.yaml", "VirtualService", "user-svc")["spec"]["http"][0]
    return parse_duration(reads["retries"]["perTryTimeout"]) * 0.8


class Load:
    """Threads sending POST /orders (most) and GET /orders through the caller until stopped."""

    def __init__(self, url: str, user_id: int, posters: int = 3, readers: int = 1):
        self.url, self.user_id, self.results = url, user_id, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=("POST",)) for _ in range(posters)]
        self._threads += [threading.Thread(target=self._run, args=("GET",)) for _ in range(readers)]

    def _run(self, method: str) -> None:
        while not self._stop.is_set():
            try:
                if method == "POST":
                    body = {"user_id": self.user_id, "items": ORDER_ITEMS}
                    response = requests.post(f"{self.url}/orders", json=body, timeout=10)
                else:
                    response = requests.get(f"{self.url}/orders", timeout=10)
                self.results.append((method, response.status_code, response.text[:200]))
            except requests.RequestException as exc:
                self.results.append((method, None, repr(exc)))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def failed(self) -> list:
        return [r for r in self.results if r[1] is None or r[1] >= 300]


def order_pod(running: ExitStack, workdir: Path, user_url: str, graceful: int):
    """One order replica with its sidecar: (envoy, app). Envoy's inbound listener is the pod's address."""
    app_port = free_port()
    user_routes = routes_from_virtual_service(
        istio_object("virtualservices.yaml", "VirtualService", "user-svc"), "user-svc"
    )
    user_rule = istio_object("destinationrules.yaml", "DestinationRule", "user-svc")
    port = int(user_url.rsplit(":", 1)[1])
    config = bootstrap(
        [
            http_listener("inbound", [inbound_route("inbound-order-svc")], "INBOUND"),
            http_listener("outbound", user_routes, "OUTBOUND"),
        ],
        [static_cluster("inbound-order-svc", app_port), cluster_from_destination_rule(user_rule, "user-svc", [port])],
        node_cluster="order-svc.meshed",
    )
    envoy = start_envoy(config, workdir / "envoy")
    running.callback(envoy.stop)
    app = start_service(
        "order-svc",
        workdir,
        port=app_port,
        env={"USER_SVC_URL": envoy.url("outbound"), "GUNICORN_GRACEFUL_TIMEOUT": str(graceful)},
    )
    running.callback(app.stop)
    # Envoy first: gunicorn's graceful stop would wait for the sidecar's keep-alive connections.
    running.callback(envoy.stop)
    return envoy, app


def replay_termination(tmp_path: Path, drain: float, until_proxy_exit: bool = False) -> dict:
    """Delete pod A under load, with the Deployment's settings and ``drain`` as terminationDrainDuration
    (seconds, unscaled); ``until_proxy_exit`` ends the replay there. Returns the load's results, the
    straight order's answer, and A's timings."""
    settings = termination_settings()
    pre_stop, grace_period = settings["pre_stop"] * SCALE, settings["grace_period"] * SCALE
    drain *= SCALE
    graceful = max(1, round(settings["graceful"] * SCALE))
    delay = user_check_delay()
    with ExitStack() as running:
        user = start_service("user-svc", tmp_path)
        running.callback(user.stop)
        user_id = requests.post(f"{user.url}/users", json={"name": "Ada", "email": "a@example.com"}, timeout=5).json()[
            "id"
        ]
        slow_user = running.enter_context(ScriptedServer([Step(delay=delay, proxy_to=user.url)]))
        # One after the other: an Envoy started from a worker thread exits with that thread.
        pod_a = order_pod(running, tmp_path / "a", slow_user.url, graceful)
        pod_b = order_pod(running, tmp_path / "b", slow_user.url, graceful)
        eds = tmp_path / "order-svc-endpoints.json"
        pod_ports = [pod_a[0].listener_ports["inbound"], pod_b[0].listener_ports["inbound"]]
        write_eds(eds, "order-svc", pod_ports, version=1)
        rule = istio_object("destinationrules.yaml", "DestinationRule", "order-svc")
        routes = routes_from_virtual_service(
            istio_object("virtualservices.yaml", "VirtualService", "order-svc"), "order-svc"
        )
        caller = start_envoy(
            bootstrap(
                [http_listener("to-order", routes)], [cluster_from_destination_rule(rule, "order-svc", eds_path=eds)]
            ),
            tmp_path / "caller",
        )
        running.callback(caller.stop)
        assert caller.stat("cluster.order-svc.membership_total") == 2

        envoy_a, app_a = pod_a
        timings, straight = {}, {}

        def straight_order():
            """A caller that still has A in its endpoints sends an order just before A's app gets SIGTERM."""
            try:
                body = {"user_id": user_id, "items": ORDER_ITEMS}
                response = requests.post(f"{envoy_a.url('inbound')}/orders", json=body, timeout=10)
                straight["status"] = response.status_code
            except requests.RequestException as exc:
                straight["status"] = repr(exc)

        with Load(caller.url("to-order"), user_id) as load:
            time.sleep(0.5)  # traffic reaches both replicas
            served_before = envoy_a.stat("http.inbound.downstream_rq_total")
            t0 = time.monotonic()
            envoy_a.drain_inbound()  # istio-proxy: SIGTERM -> drain; exits after terminationDrainDuration
            events = sorted(
                [
                    (pre_stop / 2, "endpoints"),
                    (pre_stop - delay / 2, "straight order"),
                    (pre_stop, "app SIGTERM"),
                    (drain, "proxy exits"),
                    (grace_period, "kubelet kills"),
                ]
            )
            sender = None
            for at, event in events:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                if event == "endpoints":
                    write_eds(eds, "order-svc", pod_ports[1:], version=2)
                elif event == "straight order":
                    sender = threading.Thread(target=straight_order)
                    sender.start()
                elif event == "app SIGTERM":
                    app_a.process.terminate()
                elif event == "proxy exits":
                    timings["app_exited"] = app_a.process.poll() is not None
                    timings["served_while_draining"] = envoy_a.stat("http.inbound.downstream_rq_total") - served_before
                    envoy_a.process.kill()  # pilot-agent aborts Envoy
                    if until_proxy_exit:
                        sender.join(10)
                        break
                elif event == "kubelet kills":
                    app_a.process.kill()
                    envoy_a.process.kill()
                    if sender is not None:
                        sender.join(10)
        assert caller.stat("cluster.order-svc.membership_total") == 1
        return {"load": load, "straight": straight.get("status"), **timings}


@pytest.mark.parametrize("drain", ["manifests", "istio-default"])
def test_a_pod_deleted_under_load_drops_no_request(tmp_path, drain):
    settings = termination_settings()
    if drain == "manifests":
        # The order the manifests promise: proxy drain > preStop + graceful, grace period > drain.
        assert settings["drain"] > settings["pre_stop"] + settings["graceful"], settings
        assert settings["grace_period"] > settings["drain"], settings
        outcome = replay_termination(tmp_path, settings["drain"])
        load = outcome["load"]
        assert not load.failed(), load.failed()
        assert outcome["straight"] == 201, outcome["straight"]
        assert outcome["app_exited"], "the app was still running when the proxy exited"
        assert outcome["served_while_draining"] > 1, "no request reached A after its drain began"
        posts = sum(1 for r in load.results if r[0] == "POST")
        print(
            f"\nrollout: {len(load.results)} requests ({posts} POST), 0 failed; A served"
            f" {outcome['served_while_draining']} while draining; straight order 201"
        )
    else:
        outcome = replay_termination(tmp_path, ISTIO_DEFAULT_TERMINATION_DRAIN_SECONDS, until_proxy_exit=True)
        # The proxy left as the app's graceful period began: the order in flight there was cut.
        assert outcome["straight"] != 201, outcome["straight"]
        assert not outcome["app_exited"]
        print(f"\nrollout with a 5 s drain: straight order -> {outcome['straight']}")
