"""VirtualService -> Envoy routes and virtual hosts, as istiod builds them for a sidecar's outbound
route configuration and for a gateway (pilot/pkg/networking/core/route/route.go
``BuildHTTPRoutesForVirtualService``, ``TranslateRoute``, ``TranslateRouteMatch``; virtual hosts in
pilot/pkg/networking/core/httproute.go ``buildSidecarOutboundHTTPRouteConfig``).

Translated: ``http[].name``, ``match`` (``uri`` exact/prefix/regex, ``method``, ``headers``),
``route`` with one destination (host, subset, port), ``timeout`` and ``retries`` (istiod's defaults when
absent, testsupport/envoy.py ``retry_policy_from_istio``). Anything else raises NotImplementedError.
"""

from __future__ import annotations

from testsupport.envoy import envoy_duration, parse_duration, retry_policy_from_istio

from .model import Service

_HTTP_FIELDS = {"name", "match", "route", "timeout", "retries"}
_MATCH_FIELDS = {"uri", "method", "headers"}


def cluster_name(direction: str, port: int, subset: str, host: str) -> str:
    """pilot/pkg/model/service.go ``BuildSubsetKey``: ``outbound|80|v1|user-svc.meshed.svc.cluster.local``."""
    return f"{direction}|{port}|{subset}|{host}"


def _string_match(match: dict, what: str) -> dict:
    (kind, value), *more = match.items()
    if more or kind not in ("exact", "prefix", "regex"):
        raise NotImplementedError(f"{what}: cannot translate match {match}")
    return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}


def _route_match(match: dict) -> dict:
    """route.go ``TranslateRouteMatch``: the uri as path/prefix/safe_regex (``/`` when absent), the
    method as the ``:method`` header, an empty header match as a presence match."""
    unknown = set(match) - _MATCH_FIELDS
    if unknown:
        raise NotImplementedError(f"match: cannot translate {sorted(unknown)}")
    envoy: dict = {"prefix": "/"}
    if "uri" in match:
        uri = _string_match(match["uri"], "uri")
        envoy = {"path": uri["exact"]} if "exact" in uri else uri
    headers = []
    if "method" in match:
        headers.append({"name": ":method", "string_match": _string_match(match["method"], "method")})
    for name, header in (match.get("headers") or {}).items():
        if header:
            headers.append({"name": name.lower(), "string_match": _string_match(header, f"header {name}")})
        else:
            headers.append({"name": name.lower(), "present_match": True})
    if headers:
        envoy["headers"] = headers
    return envoy


def routes(virtual_service: dict, default_port: int) -> list[dict]:
    """The VirtualService's http routes in order (first match wins), each to the subset cluster of its
    one destination. ``default_port``: the destination port when the route names none."""
    result = []
    for http in virtual_service["spec"]["http"]:
        unknown = set(http) - _HTTP_FIELDS
        if unknown:
            raise NotImplementedError(f"route {http.get('name')!r}: cannot translate {sorted(unknown)}")
        (destination,) = http["route"]  # one destination: no weights to translate
        if set(destination) - {"destination"}:
            raise NotImplementedError(f"route {http.get('name')!r}: only a destination is translated")
        target = destination["destination"]
        port = int(target.get("port", {}).get("number", default_port))
        action: dict = {"cluster": cluster_name("outbound", port, target.get("subset", ""), target["host"])}
        # route.go: a route without timeout has none ("0s"); the timeout is also the stream's maximum.
        timeout = envoy_duration(parse_duration(http["timeout"])) if "timeout" in http else "0s"
        action["timeout"] = timeout
        action["max_stream_duration"] = {"max_stream_duration": timeout, "grpc_timeout_header_max": timeout}
        policy = retry_policy_from_istio(http.get("retries"))
        if policy:
            action["retry_policy"] = policy
        # route.go getRouteOperation: the span name is "<host>:<port>/*" unless the route is named.
        decorator = {"operation": f"{target['host']}:{port}/*"}
        for match in http.get("match") or [{}]:
            result.append(
                {"name": http.get("name", ""), "match": _route_match(match), "route": action, "decorator": decorator}
            )
    return result


def domains(service: Service) -> list[str]:
    """httproute.go ``generateVirtualHostDomains``: the FQDN, its shorter forms within the namespace, and
    the virtual address; with ``:port`` too when the port is not 80."""
    names = [
        service.host,
        f"{service.name}.{service.namespace}.svc",
        f"{service.name}.{service.namespace}",
        service.name,
        service.address,
    ]
    if service.port != 80:
        names += [f"{name}:{service.port}" for name in names]
    return names


def outbound_route_config(port: int, services: list[Service], virtual_services: list[dict]) -> dict:
    """The route configuration named after the port (``"80"``) that every sidecar's HTTP listener on
    that port uses: one virtual host per service on the port, with its VirtualService's routes (or
    istiod's default route to the service), and ``allow_any`` for everything else (outbound traffic
    policy ALLOW_ANY, the default), to the PassthroughCluster."""
    virtual_hosts = []
    for service in (s for s in services if s.port == port):
        bound = [
            vs for vs in virtual_services if service.host in vs["spec"]["hosts"] and not vs["spec"].get("gateways")
        ]
        if bound:
            (vs,) = bound
            service_routes = routes(vs, port)
        else:  # route.go BuildDefaultHTTPOutboundRoute
            service_routes = [
                {
                    "name": "default",
                    "match": {"prefix": "/"},
                    "route": {
                        "cluster": cluster_name("outbound", port, "", service.host),
                        "timeout": "0s",
                        "retry_policy": retry_policy_from_istio(None),
                    },
                }
            ]
        virtual_hosts.append(
            {
                "name": f"{service.host}:{port}",
                "domains": domains(service),
                "routes": service_routes,
                "include_request_attempt_count": True,
            }
        )
    virtual_hosts.append(
        {
            "name": "allow_any",
            "domains": ["*"],
            "routes": [
                {
                    "name": "allow_any",
                    "match": {"prefix": "/"},
                    "route": {"cluster": "PassthroughCluster", "timeout": "0s"},
                }
            ],
            "include_request_attempt_count": True,
        }
    )
    return {"name": str(port), "virtual_hosts": virtual_hosts, "validate_clusters": False}
