"""A local rehearsal of the Istio data plane: our two images as pods with Envoy sidecars, in Docker.

Each module translates one kind the way istiod (>= 1.24) does, and cites the istiod source it follows
(paths under github.com/istio/istio):

- ``capture``: the nat rules istio-iptables writes for the injection template's arguments;
- ``certificates``: a root CA per run and one workload certificate per ServiceAccount, as Istio's CA
  issues them, served to Envoy through file-based SDS;
- ``virtual_service``, ``destination_rule``: routes and clusters;
- ``peer_authentication``: the inbound filter chains' transport (STRICT, PERMISSIVE);
- ``authorization_policy``: ``envoy.filters.http.rbac`` filters;
- ``gateway``: the ingress gateway's listener and routes;
- ``telemetry``: tracing, access logs and Istio's request metrics (through the stats access logger);
- ``bootstrap``: one proxy's whole static configuration (listeners, clusters, admin);
- ``runtime``: the pods in Docker (pause container, capture, app, sidecar) and ``__main__`` the CLI
  behind ``./manage_all.sh mesh``.

It is a rehearsal, not a replacement for Istio: no istiod pushes (the configuration is static and made
once), no pilot-agent (no health rewrite, no metrics merging, no DNS proxy), none of Istio's own Envoy
filters (istio.metadata_exchange, istio.alpn, istio.stats), no Kiali.
"""
