"""Gateway and the VirtualServices bound to it -> the ingress gateway's listener, routes and clusters
(pilot/pkg/networking/core/gateway.go ``buildGatewayListeners``, ``buildGatewayHTTPRouteConfig``).

One listener per Gateway server port (istiod binds it to the gateway pod's target port, 8080 for
Service port 80; here to a loopback port), HTTP connection manager with ``use_remote_address: true``,
route configuration ``http.<port>``: one virtual host per server host (``*`` here) with the routes of
every VirtualService whose ``gateways`` name this Gateway, in order. A path no route matches gets
Envoy's 404 (NR). Upstream clusters are the services' outbound clusters (destination_rule.py): the
gateway calls the pods over mTLS with its own identity, the istio-ingressgateway ServiceAccount's.
"""

from __future__ import annotations

from . import bootstrap, destination_rule, telemetry, virtual_service

NAMESPACE = "istio-system"
WORKLOAD = "istio-ingressgateway"
SERVICE_ACCOUNT = "istio-ingressgateway-service-account"
LABELS = {"istio": "ingressgateway", "app": "istio-ingressgateway"}


def _bound(virtual_service_obj: dict, gateway: dict) -> bool:
    names = virtual_service_obj["spec"].get("gateways") or []
    namespace = gateway["metadata"].get("namespace", "default")
    return any(n in (gateway["metadata"]["name"], f"{namespace}/{gateway['metadata']['name']}") for n in names)


def gateway_bootstrap(
    config: bootstrap.MeshConfig, listen: tuple[str, int], ports: dict[str, int], sampling: float | None = None
) -> dict:
    """The ingress gateway's bootstrap; its one HTTP server listens on ``listen`` (address, port). It runs
    in the host's network namespace (the one way to publish it on loopback while the pods' networks stay
    internal), so its admin, Prometheus and health listeners take the loopback ``ports`` given
    (``admin``, ``prometheus``, ``health``) instead of 15000, 15090 and 15021."""
    (gateway,) = [
        g for g in config.kind("Gateway") if all(LABELS.get(k) == v for k, v in g["spec"]["selector"].items())
    ]
    (server,) = gateway["spec"]["servers"]
    unknown = set(server) - {"port", "hosts"}
    if unknown or server["port"]["protocol"] != "HTTP":
        raise NotImplementedError(f"Gateway server {server}: only plain HTTP servers are translated")
    routes = []
    for vs in (v for v in config.kind("VirtualService") if _bound(v, gateway)):
        if vs["spec"]["hosts"] != ["*"]:
            raise NotImplementedError("gateway VirtualService hosts other than '*'")
        routes += virtual_service.routes(vs, 80)
    port = server["port"]["number"]
    identity = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"
    tracing = bootstrap.tracing_for(config, f"{WORKLOAD}.{NAMESPACE}", sampling)
    route_config = {
        "name": f"http.{port}",
        "virtual_hosts": [
            {"name": f"{host}:{port}", "domains": [host], "routes": routes, "include_request_attempt_count": True}
            for host in server["hosts"]
        ],
        "request_headers_to_add": bootstrap.peer_headers(WORKLOAD, NAMESPACE),
        "validate_clusters": False,
    }
    listener = {
        "name": f"0.0.0.0_{port}",
        "address": bootstrap.socket_address(*listen),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "filters": [
                    bootstrap.http_connection_manager(
                        f"outbound_0.0.0.0_{port}",
                        route_config,
                        [],
                        [
                            *telemetry.access_logs(config.kind("Telemetry"), NAMESPACE, LABELS, config.access_log_file),
                            telemetry.request_metrics("source", WORKLOAD, NAMESPACE, identity),
                        ],
                        use_remote_address=True,
                        **tracing,
                    )
                ]
            }
        ],
    }
    rules = {r["spec"]["host"]: r for r in config.kind("DestinationRule")}
    clusters = [*bootstrap.collector_clusters(config)]
    for service in config.services:
        clusters += destination_rule.outbound_clusters(service, rules.get(service.host), bootstrap.SECRETS_DIR)
    extra_listeners, extra_clusters = bootstrap.prometheus_and_health_listeners(
        listen[0], ports["prometheus"], ports["health"], ports["admin"]
    )
    return {
        "node": {
            "id": f"router~127.0.0.1~{WORKLOAD}-0.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
            "cluster": f"{WORKLOAD}.{NAMESPACE}",
        },
        "admin": bootstrap.admin_config(ports["admin"]),
        "layered_runtime": bootstrap.RUNTIME,
        "static_resources": {"listeners": [listener, *extra_listeners], "clusters": [*clusters, *extra_clusters]},
    }
