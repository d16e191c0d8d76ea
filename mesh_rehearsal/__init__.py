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
- ``model``: what istiod knows: services, pods and the Istio objects, from ``k8s/`` and ``istio/``;
- ``agent``: pilot-agent's metrics merging on 15020; ``prometheus_config``: the scrape configuration;
  ``trace_receiver``: the OTLP receiver ``mesh up`` runs (``otlp_receiver`` on ``http_server``, which
  the tests' receivers and fake servers use too);
- ``runtime``: the pods in Docker (pause container, capture, app, sidecar, agent) and ``__main__`` the
  CLI behind ``./manage_all.sh mesh``.

It is a rehearsal, not a replacement for Istio: no istiod pushes (the configuration is static and made
once), of pilot-agent only the metrics merging (no health rewrite, no DNS proxy, no SDS server), none
of Istio's own Envoy filters (istio.metadata_exchange, istio.alpn, istio.stats), no Kiali.
"""
