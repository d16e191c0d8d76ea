"""DestinationRule -> the outbound clusters istiod builds for a service: the service's default cluster
and one per subset (pilot/pkg/networking/core/cluster_builder.go ``buildSubsetCluster``), with the
traffic policy's load balancer, connection pool and outlier detection (testsupport/envoy.py
``cluster_from_destination_rule``, pilot/pkg/networking/core/cluster_traffic_policy.go) and
``tls.mode: ISTIO_MUTUAL`` as the upstream TLS context of pilot/pkg/networking/core/cluster_tls.go
``buildIstioMutualTLS``: the SDS secrets ``default`` and ``ROOTCA``, the destination's SPIFFE ids as the
SANs to verify, SNI ``outbound_.<port>_.<subset>_.<host>`` (model.BuildDNSSrvSubsetKey) and ALPN
``istio-peer-exchange, istio``.

Endpoints are the pods' addresses and target port, as EDS would give them (static here: no pushes).
"""

from __future__ import annotations

from testsupport.envoy import cluster_from_destination_rule

from .certificates import ROOT_SECRET, WORKLOAD_SECRET, sds_config
from .model import Service, selects
from .virtual_service import cluster_name

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
# cluster_tls.go: ALPN of an Istio mTLS connection (istio-peer-exchange lets Istio's proxies exchange
# metadata; with istio.alpn absent the HTTP protocol is not announced in ALPN, see bootstrap.py).
ISTIO_MTLS_ALPN = ["istio-peer-exchange", "istio"]
_TLS_FIELDS = {"mode"}


def sni(port: int, subset: str, host: str) -> str:
    return f"outbound_.{port}_.{subset}_.{host}"


def upstream_tls(port: int, subset: str, service: Service, secrets_dir: str, identities: list[str]) -> dict:
    return {
        "name": TLS_TRANSPORT_SOCKET,
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ISTIO_MTLS_ALPN,
                "tls_certificate_sds_secret_configs": [
                    {"name": WORKLOAD_SECRET, "sds_config": sds_config(f"{secrets_dir}/{WORKLOAD_SECRET}.json")}
                ],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": identity}} for identity in identities
                        ]
                    },
                    "validation_context_sds_secret_config": {
                        "name": ROOT_SECRET,
                        "sds_config": sds_config(f"{secrets_dir}/{ROOT_SECRET}.json"),
                    },
                },
            },
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
