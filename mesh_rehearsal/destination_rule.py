"""DestinationRule -> the outbound clusters istiod builds for a service: the service's default cluster
and one per subset (pilot/pkg/networking/core/cluster_builder.go ``buildSubsetCluster``), with the
traffic policy's load balancer, connection pool and outlier detection (``cluster_from_destination_rule``,
pilot/pkg/networking/core/cluster_traffic_policy.go; also what the loopback tests in tests/mesh/ use) and
``tls.mode: ISTIO_MUTUAL`` as the upstream TLS context of pilot/pkg/networking/core/cluster_tls.go
``buildIstioMutualTLS``: the SDS secrets ``default`` and ``ROOTCA``, the destination's SPIFFE ids as the
SANs to verify, SNI ``outbound_.<port>_.<subset>_.<host>`` (model.BuildDNSSrvSubsetKey) and ALPN
``istio-peer-exchange, istio``.

Endpoints are the pods' addresses and target port, as EDS would give them (static here: no pushes).
"""

from __future__ import annotations

from pathlib import Path

from .certificates import mtls_context
from .model import Service, checked, envoy_duration, parse_duration, selects
from .virtual_service import cluster_name

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
# cluster_tls.go: ALPN of an Istio mTLS connection (istio-peer-exchange lets Istio's proxies exchange
# metadata; with istio.alpn absent the HTTP protocol is not announced in ALPN, see bootstrap.py).
ISTIO_MTLS_ALPN = ["istio-peer-exchange", "istio"]
_TLS_FIELDS = {"mode"}

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
    checked(spec, {"host", "trafficPolicy", "subsets"}, "DestinationRule")
    policy = dict(spec.get("trafficPolicy", {}))
    for field_name in leave_out:
        policy.pop(field_name, None)
    if "subsets" in spec and "subsets" not in leave_out:
        raise NotImplementedError("DestinationRule subsets: not translated (pass leave_out=('subsets', ...))")
    checked(policy, _TRAFFIC_POLICY_FIELDS, "trafficPolicy")
    cluster: dict = {"name": name}
    if eds_path is not None:
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {
            "eds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(eds_path)}}
        }
    else:
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = load_assignment(name, ports or [])

    balancer = checked(policy.get("loadBalancer", {}), {"simple"}, "loadBalancer")
    if balancer:
        # cluster_traffic_policy.go applyLoadBalancer: simple LEAST_REQUEST/LEAST_CONN -> LEAST_REQUEST.
        simple = balancer["simple"]
        if simple not in ("LEAST_REQUEST", "LEAST_CONN", "ROUND_ROBIN", "RANDOM"):
            raise NotImplementedError(f"loadBalancer.simple {simple}")
        cluster["lb_policy"] = {"LEAST_CONN": "LEAST_REQUEST"}.get(simple, simple)

    pool = checked(policy.get("connectionPool", {}), set(_POOL_FIELDS), "connectionPool")
    if pool:
        # cluster_traffic_policy.go applyConnectionPool: thresholds start from
        # getDefaultCircuitBreakerThresholds (all MaxUint32: istiod lifts Envoy's default of 3
        # concurrent retries), and only values > 0 replace them. One threshold, priority DEFAULT.
        tcp = checked(pool.get("tcp", {}), _POOL_FIELDS["tcp"], "connectionPool.tcp")
        http = checked(pool.get("http", {}), _POOL_FIELDS["http"], "connectionPool.http")
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
        cluster.update(_outlier_detection(checked(policy["outlierDetection"], _OUTLIER_FIELDS, "outlierDetection")))
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


def sni(port: int, subset: str, host: str) -> str:
    return f"outbound_.{port}_.{subset}_.{host}"


def upstream_tls(port: int, subset: str, service: Service, secrets_dir: str, identities: list[str]) -> dict:
    return {
        "name": TLS_TRANSPORT_SOCKET,
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "common_tls_context": mtls_context(
                secrets_dir, ISTIO_MTLS_ALPN, [{"exact": identity} for identity in identities]
            ),
            "sni": sni(port, subset, service.host),
        },
    }


def _endpoints(name: str, addresses: list[str], port: int) -> dict:
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": a, "port_value": port}}}} for a in addresses
                ]
            }
        ],
    }


def outbound_clusters(service: Service, destination_rule: dict | None, secrets_dir: str) -> list[dict]:
    """``outbound|<port>||<host>`` and ``outbound|<port>|<subset>|<host>`` for each subset."""
    spec = (destination_rule or {}).get("spec", {})
    tls = spec.get("trafficPolicy", {}).get("tls")
    if tls is not None:
        unknown = set(tls) - _TLS_FIELDS
        if unknown or tls.get("mode") != "ISTIO_MUTUAL":
            raise NotImplementedError(f"DestinationRule tls {tls}: only ISTIO_MUTUAL is translated")
    # Every pod carries its ServiceAccount's identity; the SANs to verify are those of the service's pods
    # (istiod: the service's ServiceAccounts, model.Service.ServiceAccounts).
    identities = sorted({f"spiffe://cluster.local/ns/{p.namespace}/sa/{p.service_account}" for p in service.pods})
    subsets = [("", service.pods)] + [
        (subset["name"], [p for p in service.pods if selects(subset.get("labels"), p.labels)])
        for subset in spec.get("subsets", [])
    ]
    clusters = []
    for subset, pods in subsets:
        name = cluster_name("outbound", service.port, subset, service.host)
        if destination_rule is not None:
            cluster = cluster_from_destination_rule(destination_rule, name, ports=[], leave_out=("tls", "subsets"))
        else:
            cluster = {"name": name, "type": "STATIC"}
        cluster["load_assignment"] = _endpoints(name, [p.address for p in pods], service.target_port)
        cluster.setdefault("connect_timeout", "10s")  # meshConfig.connectTimeout's default
        # Without a DestinationRule istiod would use auto mTLS (transport_socket_matches on the endpoints'
        # tlsMode label); every pod here has a sidecar, so it comes to the same ISTIO_MUTUAL context.
        cluster["transport_socket"] = upstream_tls(service.port, subset, service, secrets_dir, identities)
        # Who the destination is, for the request metrics (telemetry.py): the workload behind the cluster.
        cluster["metadata"] = {
            "filter_metadata": {
                "istio": {
                    "service": service.host,
                    "workload": service.selector.get("app", service.name),
                    "namespace": service.namespace,
                }
            }
        }
        clusters.append(cluster)
    return clusters
