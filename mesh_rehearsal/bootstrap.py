"""One proxy's whole configuration, as a static bootstrap: what istiod would push over xDS to a sidecar
(pilot/pkg/networking/core: listener.go, listener_inbound.go, listener_builder.go, cluster.go) plus the
parts of pilot-agent's bootstrap (tools/packaging/common/envoy_bootstrap.json: admin on 15000, the
Prometheus listener on 15090, the health listener on 15021).

Sidecar listeners:

- ``virtualOutbound`` on 0.0.0.0:15001 (listener.go ``buildVirtualOutboundListener``): ``use_original_dst``
  hands each connection to the listener of its original destination; what none matches goes through
  the default chain to ``PassthroughCluster`` (outbound traffic policy ALLOW_ANY).
- ``0.0.0.0_<port>`` per Service port (``bind_to_port: false``): HTTP, route configuration ``"<port>"``
  (virtual_service.py), filters ``envoy.filters.http.fault``, ``envoy.filters.http.cors``, router.
- ``virtualInbound`` on 0.0.0.0:15006 (listener_inbound.go ``buildInboundListeners``): listener filters
  ``original_dst`` and ``tls_inspector``; a ``virtualInbound-blackhole`` chain for 15006 itself; one chain
  ``0.0.0.0_<target port>`` per port and transport the PeerAuthentication mode admits
  (peer_authentication.py), each an HCM to ``inbound|<port>||`` (ORIGINAL_DST, bound to 127.0.0.6);
  ``virtualInbound`` passthrough chains for any other port (TCP, to ``InboundPassthroughCluster``).
- Inbound HTTP filters in listener_builder.go ``buildHTTPConnectionManager`` order: authn (istio_authn,
  Istio's own: left out, peer identity comes from the TLS context itself), the RBAC filters
  (authorization_policy.py), istio.metadata_exchange (Istio's own: left out; the caller's workload
  travels in telemetry.py's PEER_HEADERS instead, taken off the request by a header_to_metadata filter
  placed first, before RBAC, so that denied requests are labelled too), fault, cors, istio.stats
  (Istio's own: the stats access logger stands in), router. Outbound adds istio.alpn (Istio's own:
  left out; the upstream ALPN is then ``istio-peer-exchange, istio`` and HTTP/1.1 is used, as the
  Service port is ``http``).
- Known differences in the listeners: istiod (listener_inbound.go) chooses the inbound chain with a
  ``filter_chain_matcher`` tree (destination port, then transport protocol) and adds the
  ``http_inspector`` listener filter where a port's protocol must be sniffed; here each chain carries a
  classic ``filter_chain_match`` on the same two keys (the same choice for these ports), and no
  sniffing is needed (the Service port is declared ``http``). istiod pushes the listeners and clusters
  over xDS (RDS, EDS, SDS from pilot-agent); here they are static, routes inline, secrets from files.
- ALPN: istiod's inbound mTLS HTTP chains match the ALPN values Istio's ``istio.alpn`` filter makes a
  client offer (``istio-http/1.0``, ``istio-http/1.1``, ``istio-h2``: listener.go ``mtlsHTTPALPNs``) and
  answer with ``istio-peer-exchange, h2, http/1.1``; without istio.alpn the clients here offer their
  TLS context's ``istio-peer-exchange, istio``, which is what these chains match, and they answer
  ``h2, http/1.1``.
- HCM settings as istiod sets them: ``normalize_path: true`` and
  ``path_with_escaped_slashes_action: KEEP_UNCHANGED`` (meshConfig.pathNormalization BASE, the default;
  listener_builder.go), ``use_remote_address`` false on sidecars and true at the gateway, inbound
  ``forward_client_cert_details: APPEND_FORWARD`` with ``set_current_client_cert_details`` (subject, DNS,
  URI), ``server_name: istio-envoy``, request ids generated and used for the sampling decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import authorization_policy, destination_rule, peer_authentication, telemetry, virtual_service
from .model import Pod, Service
from .virtual_service import inbound_route

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINAL_DST_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
HEALTH_CHECK_TYPE = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
UUID_TYPE = "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"

PROXY_UID = 1337
ADMIN_PORT = 15000
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
HEALTH_PORT = 15021
PROMETHEUS_PORT = 15090
INBOUND_PASSTHROUGH_BIND = "127.0.0.6"
# Where the proxy's files appear inside its container.
PROXY_DIR = "/etc/istio/proxy"
SECRETS_DIR = f"{PROXY_DIR}/sds"
HTTP_ALPN = ["h2", "http/1.1"]  # the inbound HTTP chains' ALPN (istio-peer-exchange is Istio's own)


# Envoy's OpenTelemetry tracer sends a batch every 5 s or 5 spans; a rehearsal is watched as it
# runs, so every span goes out within 100 ms (runtime keys of the tracer, not Istio settings).
RUNTIME = {
    "layers": [
        {
            "name": "static",
            "static_layer": {
                "tracing.opentelemetry.min_flush_spans": 1,
                "tracing.opentelemetry.flush_interval_ms": 100,
            },
        }
    ]
}


@dataclass
class MeshConfig:
    """The mesh-wide inputs: every service, the Istio objects, and where traces go."""

    services: list[Service]
    istio_objects: list[dict]
    collector_address: tuple[str, int] | None = None  # the OTLP/HTTP receiver
    providers: dict | None = None  # meshConfig.extensionProviders by name
    access_log_file: str | None = None  # meshConfig.accessLogFile

    def kind(self, kind: str) -> list[dict]:
        return [o for o in self.istio_objects if o["kind"] == kind]


def socket_address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def _tcp_proxy(stat_prefix: str, cluster: str) -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster},
    }


def _original_dst_cluster(name: str, bind: str | None = None) -> dict:
    cluster = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "cleanup_interval": "60s",
    }
    if bind:
        cluster["upstream_bind_config"] = {"source_address": {"address": bind, "port_value": 0}}
    return cluster


def _static_cluster(name: str, host: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}],
        },
    }


def http_connection_manager(
    stat_prefix: str, route_config: dict, http_filters: list[dict], access_logs: list[dict], **options
) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": stat_prefix,
            "route_config": route_config,
            "http_filters": [
                *http_filters,
                {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE}},
                {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_TYPE}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
            ],
            "access_log": access_logs,
            "normalize_path": True,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
            "server_name": "istio-envoy",
            "generate_request_id": True,
            "request_id_extension": {"typed_config": {"@type": UUID_TYPE, "use_request_id_for_trace_sampling": True}},
            "stream_idle_timeout": "0s",
            **options,
        },
    }


def tracing_for(config: MeshConfig, service_name: str, sampling: float | None = None) -> dict:
    if config.collector_address is None:
        return {}
    settings = telemetry.tracing_settings(
        [t for t in config.kind("Telemetry") if t["metadata"]["namespace"] == "istio-system"], config.providers or {}
    )
    if settings is None:
        return {}
    host, port = config.collector_address
    percentage = settings[1] if sampling is None else sampling
    return {"tracing": telemetry.hcm_tracing(service_name, percentage, f"http://{host}:{port}")}


def collector_clusters(config: MeshConfig) -> list[dict]:
    if config.collector_address is None:
        return []
    return [_static_cluster(telemetry.COLLECTOR_CLUSTER, *config.collector_address)]


def prometheus_and_health_listeners(
    host: str = "0.0.0.0",
    prometheus_port: int = PROMETHEUS_PORT,
    health_port: int = HEALTH_PORT,
    admin_port: int = ADMIN_PORT,
) -> tuple[list[dict], list[dict]]:
    """envoy_bootstrap.json: ``/stats/prometheus`` on 15090 (the admin's, through ``prometheus_stats``)
    and ``/healthz/ready`` on 15021. Istio routes the latter to pilot-agent, which asks Envoy's
    readiness; with no agent, Envoy's health check filter answers it (200 while not draining)."""
    prometheus = {
        "name": "prometheus_listener",
        "address": socket_address(host, prometheus_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": "stats",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "backend",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/stats/prometheus"},
                                                "route": {"cluster": "prometheus_stats"},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
                            ],
                        },
                    }
                ]
            }
        ],
    }
    health = {
        "name": "health_listener",
        "address": socket_address(host, health_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": "health",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "health",
                                        "domains": ["*"],
                                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.health_check",
                                    "typed_config": {
                                        "@type": HEALTH_CHECK_TYPE,
                                        "pass_through_mode": False,
                                        "headers": [{"name": ":path", "string_match": {"exact": "/healthz/ready"}}],
                                    },
                                },
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return [prometheus, health], [_static_cluster("prometheus_stats", "127.0.0.1", admin_port)]


def admin_config(port: int = ADMIN_PORT) -> dict:
    return {"address": socket_address("127.0.0.1", port)}


def peer_headers(workload: str, namespace: str) -> list[dict]:
    return [
        {"header": {"key": telemetry.PEER_WORKLOAD, "value": workload}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {
            "header": {"key": telemetry.PEER_NAMESPACE, "value": namespace},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
    ]


def sidecar(pod: Pod, config: MeshConfig, mtls_mode: str | None = None) -> dict:
    """The sidecar bootstrap of ``pod``. ``mtls_mode`` overrides what the PeerAuthentications say."""
    identity = f"spiffe://cluster.local/ns/{pod.namespace}/sa/{pod.service_account}"
    service_name = f"{pod.app}.{pod.namespace}"  # the tracer's service: canonical service . namespace
    tracing = tracing_for(config, service_name)
    logs = telemetry.access_logs(config.kind("Telemetry"), pod.namespace, pod.labels, config.access_log_file)
    outbound_metrics = telemetry.request_metrics("source", pod.app, pod.namespace, identity)
    own_services = [s for s in config.services if any(p.name == pod.name for p in s.pods)]
    inbound_metrics = telemetry.request_metrics(
        "destination", pod.app, pod.namespace, identity, own_services[0].host if own_services else ""
    )

    # Outbound: one HTTP listener per service port, reached through virtualOutbound.
    listeners = []
    for port in sorted({s.port for s in config.services}):
        route_config = virtual_service.outbound_route_config(port, config.services, config.kind("VirtualService"))
        route_config["request_headers_to_add"] = peer_headers(pod.app, pod.namespace)
        listeners.append(
            {
                "name": f"0.0.0.0_{port}",
                "address": socket_address("0.0.0.0", port),
                "bind_to_port": False,
                "traffic_direction": "OUTBOUND",
                "filter_chains": [
                    {
                        "filters": [
                            http_connection_manager(
                                f"outbound_0.0.0.0_{port}",
                                route_config,
                                [],
                                [*logs, outbound_metrics],
                                use_remote_address=False,
                                **tracing,
                            )
                        ]
                    }
                ],
            }
        )
    listeners.insert(
        0,
        {
            "name": "virtualOutbound",
            "address": socket_address("0.0.0.0", OUTBOUND_PORT),
            "use_original_dst": True,
            "traffic_direction": "OUTBOUND",
            "filter_chains": [
                {
                    "name": "virtualOutbound-blackhole",
                    "filter_chain_match": {"destination_port": OUTBOUND_PORT},
                    "filters": [_tcp_proxy("BlackHoleCluster", "BlackHoleCluster")],
                }
            ],
            "default_filter_chain": {
                "name": "PassthroughFilterChain",
                "filters": [_tcp_proxy("PassthroughCluster", "PassthroughCluster")],
            },
        },
    )

    # Inbound: virtualInbound with a chain per target port and admitted transport.
    mode = mtls_mode or peer_authentication.mode_for(config.kind("PeerAuthentication"), pod.namespace, pod.labels)
    rbac = authorization_policy.http_filters(config.kind("AuthorizationPolicy"), pod.namespace, pod.labels)
    chains = [
        {
            "name": "virtualInbound-blackhole",
            "filter_chain_match": {"destination_port": INBOUND_PORT},
            "filters": [_tcp_proxy("BlackHoleCluster", "BlackHoleCluster")],
        }
    ]
    inbound_clusters = []
    for port in sorted({s.target_port for s in own_services}):
        cluster = f"inbound|{port}||"
        inbound_clusters.append(_original_dst_cluster(cluster, INBOUND_PASSTHROUGH_BIND))
        route = inbound_route(cluster)
        route["decorator"] = {"operation": f"{pod.app}.{pod.namespace}.svc.cluster.local:{port}/*"}
        route_config = {
            "name": cluster,
            "virtual_hosts": [{"name": f"inbound|http|{port}", "domains": ["*"], "routes": [route]}],
            "validate_clusters": False,
        }
        for transport in peer_authentication.transports(mode):
            chain = {
                "name": f"0.0.0.0_{port}",
                "filter_chain_match": {"destination_port": port, "transport_protocol": transport},
                "filters": [
                    http_connection_manager(
                        f"inbound_0.0.0.0_{port}",
                        route_config,
                        [telemetry.peer_metadata_filter(), *rbac],
                        [*logs, inbound_metrics],
                        use_remote_address=False,
                        forward_client_cert_details="APPEND_FORWARD",
                        set_current_client_cert_details={"subject": True, "dns": True, "uri": True},
                        server_header_transformation="PASS_THROUGH",
                        **tracing,
                    )
                ],
            }
            if transport == "tls":
                chain["filter_chain_match"]["application_protocols"] = ["istio-peer-exchange", "istio", *HTTP_ALPN]
                chain["transport_socket"] = peer_authentication.inbound_tls(SECRETS_DIR, HTTP_ALPN)
            chains.append(chain)
    # Any other port: the passthrough chains, TCP, to the original destination (authorised by the
    # network RBAC filter, which allows nothing here: every ALLOW rule names HTTP fields).
    network_rbac = authorization_policy.network_filters(config.kind("AuthorizationPolicy"), pod.namespace, pod.labels)
    for transport in peer_authentication.transports(mode):
        chain = {
            "name": "virtualInbound",
            "filter_chain_match": {"transport_protocol": transport},
            "filters": [*network_rbac, _tcp_proxy("InboundPassthroughCluster", "InboundPassthroughCluster")],
        }
        if transport == "tls":
            chain["transport_socket"] = peer_authentication.inbound_tls(SECRETS_DIR, ["istio-peer-exchange", "istio"])
        chains.append(chain)
    listeners.append(
        {
            "name": "virtualInbound",
            "address": socket_address("0.0.0.0", INBOUND_PORT),
            "traffic_direction": "INBOUND",
            "listener_filters": [
                {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST_TYPE}},
                {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR_TYPE}},
            ],
            "filter_chains": chains,
        }
    )
    extra_listeners, extra_clusters = prometheus_and_health_listeners()
    listeners += extra_listeners

    clusters = [
        _original_dst_cluster("PassthroughCluster"),
        _original_dst_cluster("InboundPassthroughCluster", INBOUND_PASSTHROUGH_BIND),
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
        *inbound_clusters,
        *extra_clusters,
        *collector_clusters(config),
    ]
    rules = {r["spec"]["host"]: r for r in config.kind("DestinationRule")}
    for service in config.services:
        clusters += destination_rule.outbound_clusters(service, rules.get(service.host), SECRETS_DIR)
    return {
        "node": {
            "id": f"sidecar~{pod.address}~{pod.name}.{pod.namespace}~{pod.namespace}.svc.cluster.local",
            "cluster": service_name,
            "metadata": {"NAME": pod.name, "NAMESPACE": pod.namespace, "LABELS": pod.labels},
        },
        "admin": admin_config(),
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "layered_runtime": RUNTIME,
    }
