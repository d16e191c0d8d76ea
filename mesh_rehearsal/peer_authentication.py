"""PeerAuthentication -> what a sidecar's inbound filter chains accept, as istiod decides it
(pilot/pkg/security/authn/policy_applier.go ``InboundMTLSSettings``, ``GetMutualTLSModeForPort``;
the chains themselves in pilot/pkg/networking/core/listener_inbound.go ``inboundChainForOpts``):

- STRICT: one chain per port matched on ``transport_protocol: tls``, whose TLS context requires a
  client certificate signed by the mesh root; plaintext matches no chain and the connection is closed.
- PERMISSIVE: the same TLS chain plus one matched on ``transport_protocol: raw_buffer`` without TLS.
- DISABLE: the plaintext chain only.

The mesh-wide default with no PeerAuthentication is PERMISSIVE. The most specific policy wins:
workload selector > namespace > root namespace; ``portLevelMtls`` is not used here and is refused.
The inbound TLS context (pilot/pkg/security/authn/utils.go ``BuildInboundTLS``): the ``default``
certificate, the ``ROOTCA`` trust bundle, SANs accepted by trust domain prefix (``spiffe://cluster.local/``),
a client certificate required, ALPN ``h2, http/1.1`` for HTTP chains, TLS 1.2 or newer.
"""

from __future__ import annotations

from .certificates import TRUST_DOMAIN, mtls_context
from .model import checked, selects

DOWNSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
MODES = ("STRICT", "PERMISSIVE", "DISABLE")


def mode_for(policies: list[dict], namespace: str, labels: dict, root_namespace: str = "istio-system") -> str:
    """The mTLS mode of a workload with ``labels`` in ``namespace``."""
    ranked = []
    for policy in policies:
        spec = checked(
            policy.get("spec") or {}, {"selector", "mtls"}, f"PeerAuthentication {policy['metadata']['name']}"
        )
        policy_namespace = policy["metadata"].get("namespace", namespace)
        selector = (spec.get("selector") or {}).get("matchLabels")
        if policy_namespace == namespace and selector:
            rank = 0 if selects(selector, labels) else None
        elif policy_namespace == namespace:
            rank = 1
        elif policy_namespace == root_namespace and not selector:
            rank = 2
        else:
            rank = None
        if rank is not None:
            mode = (spec.get("mtls") or {}).get("mode", "UNSET")
            if mode not in (*MODES, "UNSET"):
                raise NotImplementedError(f"mtls mode {mode}")
            ranked.append((rank, mode))
    for _, mode in sorted(ranked):
        if mode != "UNSET":  # UNSET inherits from the next level up
            return mode
    return "PERMISSIVE"


def inbound_tls(secrets_dir: str, alpn: list[str]) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "common_tls_context": mtls_context(secrets_dir, alpn, [{"prefix": f"spiffe://{TRUST_DOMAIN}/"}]),
            "require_client_certificate": True,
        },
    }


def transports(mode: str) -> list[str]:
    """The transport protocols an inbound port accepts under ``mode``, TLS first."""
    return {"STRICT": ["tls"], "PERMISSIVE": ["tls", "raw_buffer"], "DISABLE": ["raw_buffer"]}[mode]
