"""VirtualService -> Envoy routes and virtual hosts, as istiod builds them for a sidecar's outbound
route configuration and for a gateway (pilot/pkg/networking/core/route/route.go
``BuildHTTPRoutesForVirtualService``, ``TranslateRoute``, ``TranslateRouteMatch``; virtual hosts in
pilot/pkg/networking/core/httproute.go ``buildSidecarOutboundHTTPRouteConfig``).

Translated: ``http[].name``, ``match`` (``uri`` exact/prefix/regex, ``method``, ``headers``),
``route`` with one destination (host, subset, port), ``timeout`` and ``retries`` (``retry_policy_from_istio``,
istiod's defaults when absent), and the sidecar's own inbound route. Anything else raises
NotImplementedError. ``routes_from_virtual_service`` is the loopback tests' form (tests/mesh/): the same
routes, every one to one cluster.
"""

from __future__ import annotations

from .model import Service, checked, envoy_duration, parse_duration

PREVIOUS_HOSTS_TYPE = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

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


def routes_from_virtual_service(virtual_service: dict, cluster: str) -> list[dict]:
    """``routes``, every one to ``cluster``: the loopback tests' form (tests/mesh/), where one Envoy
    stands in front of the replicas of one service."""
    return [
        {**route, "route": {**route["route"], "cluster": cluster}} for route in routes(virtual_service, default_port=80)
    ]


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
    headers sorted by name (an empty match as a presence match), then the method as ``:method``,
    and ``case_sensitive`` set."""
    checked(match, _MATCH_FIELDS, "match")
    envoy: dict = {"prefix": "/"}
    if "uri" in match:
        uri = _string_match(match["uri"], "uri")
        envoy = {"path": uri["exact"]} if "exact" in uri else uri
    headers = []
    for name, header in (match.get("headers") or {}).items():
        if header:
            headers.append({"name": name.lower(), "string_match": _string_match(header, f"header {name}")})
        else:
            headers.append({"name": name.lower(), "present_match": True})
    headers.sort(key=lambda h: h["name"])
    if "method" in match:
        headers.append({"name": ":method", "string_match": _string_match(match["method"], "method")})
    if headers:
        envoy["headers"] = headers
    envoy["case_sensitive"] = True
    return envoy


def _operation(host: str, port: int, match: dict) -> str:
    """route.go ``GetRouteOperation``: ``<host>:<port>`` and the path the route matches (``/x*`` for
    a prefix, the path itself, the regex), the span name of the proxy's tracer."""
    if "path" in match:
        path = match["path"]
    elif "safe_regex" in match:
        path = match["safe_regex"]["regex"]
    else:
        path = match["prefix"] + "*"
    return f"{host}:{port}{path}"


def routes(virtual_service: dict, default_port: int) -> list[dict]:
    """The VirtualService's http routes in order (first match wins), each to the subset cluster of its
    one destination. ``default_port``: the destination port when the route names none."""
    result = []
    for http in virtual_service["spec"]["http"]:
        checked(http, _HTTP_FIELDS, f"route {http.get('name')!r}")
        (destination,) = http["route"]  # one destination: no weights to translate
        if set(destination) - {"destination"}:
            raise NotImplementedError(f"route {http.get('name')!r}: only a destination is translated")
        target = destination["destination"]
        port = int(target.get("port", {}).get("number", default_port))
        action: dict = {"cluster": cluster_name("outbound", port, target.get("subset", ""), target["host"])}
        # route.go setTimeout: a route without timeout has none ("0s"), and the gRPC timeout header is
        # capped by the same value (the deprecated max_grpc_timeout, which istiod still sets).
        timeout = envoy_duration(parse_duration(http["timeout"])) if "timeout" in http else "0s"
        action["timeout"] = timeout
        action["max_grpc_timeout"] = timeout
        policy = retry_policy_from_istio(http.get("retries"))
        if policy:
            action["retry_policy"] = policy
        for match in http.get("match") or [{}]:
            envoy_match = _route_match(match)
            decorator = {"operation": _operation(target["host"], port, envoy_match)}
            result.append({"name": http.get("name", ""), "match": envoy_match, "route": action, "decorator": decorator})
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
                        "max_grpc_timeout": "0s",
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
