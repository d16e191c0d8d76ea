"""Cross-references between the Kubernetes objects and the Istio configuration, in the spirit
of `istioctl analyze` (which needs a cluster): hosts, subsets, principals, selectors, ports,
probe routes and the retry budget."""

import fnmatch
import os

import pytest
import requests
import yaml
from deploy_support import (
    APPS,
    CONTRACT_USER_SVC_CLIENT,
    INGRESS_GATEWAY_PRINCIPAL,
    ISTIO_DIR,
    K8S_OVERLAYS,
    NAMESPACE,
    app_container,
    parse_duration,
)

# Sidecar to sidecar is HTTP/1.1 (port name http): refused-stream (HTTP/2) and gRPC's conditions never fire.
SAFE_FOR_WRITES = {"connect-failure", "reset-before-request"}  # no byte of the request reached the pod
# With an Idempotency-Key the service returns what the first try stored: any reset may be retried.
SAFE_FOR_KEYED_WRITES = SAFE_FOR_WRITES | {"reset"}
NEVER_FIRE_ON_HTTP1 = {
    "refused-stream",
    "unavailable",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS"}
EPSILON = 1e-9  # durations are floats: 3 x 0.3 s must fit 0.9 s


def service_name(host: str) -> str | None:
    """Service named by a VirtualService/DestinationRule host in namespace meshed, or None."""
    for suffix in (f".{NAMESPACE}.svc.cluster.local", f".{NAMESPACE}.svc", f".{NAMESPACE}"):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host if "." not in host and host != "*" else None


def mesh_virtual_services(m):
    return [vs for vs in m.of_kind("VirtualService") if not vs["spec"].get("gateways")]


def route_methods(route: dict) -> set[str] | None:
    """Methods a route is restricted to, or None when it matches any method."""
    matches = route.get("match") or []
    methods = set()
    for match in matches:
        method = match.get("method", {}).get("exact")
        if not method:
            return None
        methods.add(method)
    return methods or None


@pytest.fixture(scope="module", params=K8S_OVERLAYS)
def deployed(request, manifests):
    """An overlay together with istio/, as docs/deploy.md applies them."""
    return manifests(request.param, ISTIO_DIR)


def test_hosts_name_existing_services(deployed):
    services = deployed.names("Service")
    for vs in deployed.of_kind("VirtualService"):
        where = f"VirtualService/{vs['metadata']['name']}"
        if not vs["spec"].get("gateways"):
            for host in vs["spec"]["hosts"]:
                assert service_name(host) in services, f"{where}: host {host} is no Service"
        for route in vs["spec"].get("http", []):
            for dest in route["route"]:
                host = dest["destination"]["host"]
                assert service_name(host) in services, f"{where}: destination {host} is no Service"
    for dr in deployed.of_kind("DestinationRule"):
        assert service_name(dr["spec"]["host"]) in services, f"DestinationRule host {dr['spec']['host']}"


def test_gateways_exist_and_select_the_ingress_gateway(deployed):
    gateways = deployed.names("Gateway")
    assert gateways
    for gw in deployed.of_kind("Gateway"):
        assert gw["spec"]["selector"] == {"istio": "ingressgateway"}
    for vs in deployed.of_kind("VirtualService"):
        for name in vs["spec"].get("gateways", []):
            assert name == "mesh" or name.split("/")[-1] in gateways, f"unknown gateway {name}"


def test_ingress_routes_users_and_orders(deployed):
    edge = [vs for vs in deployed.of_kind("VirtualService") if vs["spec"].get("gateways")]
    assert len(edge) == 1
    prefixes = {}
    for route in edge[0]["spec"]["http"]:
        for match in route["match"]:
            prefixes[match["uri"]["prefix"]] = service_name(route["route"][0]["destination"]["host"])
    assert prefixes == {"/users": "user-svc", "/orders": "order-svc"}


def test_subsets_exist_and_their_labels_are_on_the_pods(deployed):
    rules = {service_name(dr["spec"]["host"]): dr for dr in deployed.of_kind("DestinationRule")}
    for vs in deployed.of_kind("VirtualService"):
        for route in vs["spec"].get("http", []):
            for dest in route["route"]:
                d = dest["destination"]
                if "subset" in d:
                    dr = rules.get(service_name(d["host"]))
                    assert dr, f"subset {d['subset']} of {d['host']} without DestinationRule"
                    assert d["subset"] in {s["name"] for s in dr["spec"].get("subsets", [])}
    for name, dr in rules.items():
        svc = deployed.get("Service", name)
        backends = deployed.workloads_selected_by(svc["spec"]["selector"])
        assert backends, f"Service {name} selects no pods"
        for subset in dr["spec"].get("subsets", []):
            labelled = [
                w for w in backends if subset["labels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert labelled, f"DestinationRule {name}: no pod carries subset {subset['name']} labels"


def test_destination_rules_use_istio_mtls_and_limits(deployed):
    hosts = set()
    for dr in deployed.of_kind("DestinationRule"):
        policy = dr["spec"]["trafficPolicy"]
        assert policy["tls"]["mode"] == "ISTIO_MUTUAL"
        assert policy["loadBalancer"]
        assert policy["connectionPool"]["tcp"]["maxConnections"] > 0
        assert policy["connectionPool"]["http"]["maxRetries"] > 0
        assert policy["outlierDetection"]["maxEjectionPercent"] < 100
        hosts.add(service_name(dr["spec"]["host"]))
    assert set(APPS) <= hosts


def test_mtls_is_strict_for_the_namespace(deployed):
    pas = deployed.of_kind("PeerAuthentication")
    assert any(
        pa["metadata"]["namespace"] == NAMESPACE
        and not pa["spec"].get("selector")
        and pa["spec"]["mtls"]["mode"] == "STRICT"
        for pa in pas
    )


def test_authorization_denies_by_default(deployed):
    policies = deployed.of_kind("AuthorizationPolicy")
    assert any(p["spec"] in ({}, None) for p in policies), "no namespace-wide allow-nothing policy"
    for p in policies:
        assert p["spec"].get("action", "ALLOW") == "ALLOW", "only ALLOW rules on top of allow-nothing"


def test_authorization_principals_and_selectors_exist(deployed):
    accounts = deployed.names("ServiceAccount")
    pod_labels = [labels for _, labels in deployed.pod_labels()]
    for policy in deployed.of_kind("AuthorizationPolicy"):
        name = policy["metadata"]["name"]
        selector = policy["spec"].get("selector", {}).get("matchLabels")
        if selector:
            assert any(selector.items() <= labels.items() for labels in pod_labels), f"{name}: selects no pod"
        for rule in policy["spec"].get("rules", []):
            for source in rule.get("from", []):
                for principal in source["source"].get("principals", []):
                    if principal == INGRESS_GATEWAY_PRINCIPAL:
                        continue
                    trust, _, rest = principal.partition("/ns/")
                    ns, _, sa = rest.partition("/sa/")
                    assert trust == "cluster.local" and ns == NAMESPACE, f"{name}: unknown principal {principal}"
                    assert sa in accounts, f"{name}: principal {principal} names no ServiceAccount"


def test_order_svc_may_only_read_users(deployed):
    policy = deployed.get("AuthorizationPolicy", "user-svc")
    rules = [
        r
        for r in policy["spec"]["rules"]
        if any(f"/ns/{NAMESPACE}/sa/order-svc" in p for s in r["from"] for p in s["source"].get("principals", []))
    ]
    assert rules
    for rule in rules:
        for op in rule["to"]:
            assert op["operation"]["methods"] == ["GET"]
            assert op["operation"]["paths"] == ["/users/*"]


def test_ingress_gateway_reaches_only_the_public_paths(deployed):
    allowed = {}
    for app in APPS:
        policy = deployed.get("AuthorizationPolicy", app)
        for rule in policy["spec"]["rules"]:
            principals = [p for s in rule["from"] for p in s["source"].get("principals", [])]
            if INGRESS_GATEWAY_PRINCIPAL in principals:
                allowed[app] = sorted(p for op in rule["to"] for p in op["operation"]["paths"])
    assert allowed == {"user-svc": ["/users", "/users/*"], "order-svc": ["/orders", "/orders/*"]}


def test_service_selectors_and_target_ports_match_pods(deployed):
    for svc in deployed.of_kind("Service"):
        name = svc["metadata"]["name"]
        backends = deployed.workloads_selected_by(svc["spec"].get("selector", {}))
        assert backends, f"Service {name} selects no pods"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for w in backends:
                ports = [p for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
                if isinstance(target, str):
                    assert target in {p["name"] for p in ports}, f"{name}: no container port named {target}"
                else:
                    assert target in {p["containerPort"] for p in ports}, f"{name}: no container port {target}"
    for app in APPS:
        port = deployed.get("Service", app)["spec"]["ports"]
        assert port == [{"name": "http", "appProtocol": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]
        container_ports = app_container(deployed.get("Deployment", app))["ports"]
        assert container_ports == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_probe_paths_are_served_routes(deployed, running_services):
    """Every probe path, asked of the real service it belongs to, answers 200."""
    services = {"user-svc": running_services.user_url, "order-svc": running_services.order_url}
    for app in APPS:
        container = app_container(deployed.get("Deployment", app))
        port_names = {p["name"] for p in container["ports"]}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]["httpGet"]
            response = requests.get(services[app] + probe["path"], allow_redirects=False, timeout=5)
            assert response.status_code == 200, f"{app} {kind}: {probe['path']} answered {response.status_code}"
            assert probe["port"] in port_names
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_route_has_explicit_timeouts_and_retries(deployed):
    # Without `retries` Istio applies its default policy, which also retries 503s: explicit only.
    for vs in deployed.of_kind("VirtualService"):
        for route in vs["spec"]["http"]:
            where = f"VirtualService/{vs['metadata']['name']} route {route.get('name')}"
            assert "timeout" in route, f"{where}: no timeout"
            assert "retries" in route, f"{where}: no explicit retry policy"
            timeout = parse_duration(route["timeout"])
            retries = route["retries"]
            if "perTryTimeout" in retries:
                assert parse_duration(retries["perTryTimeout"]) * (1 + retries["attempts"]) <= timeout + EPSILON, where
            methods = route_methods(route)
            retry_on = set(retries.get("retryOn", "").split(","))
            assert not retry_on & NEVER_FIRE_ON_HTTP1, (
                f"{where}: {retry_on & NEVER_FIRE_ON_HTTP1} never fire on HTTP/1.1"
            )
            if methods is None or not methods <= IDEMPOTENT:
                # never replay a POST that the app may have processed, unless the service deduplicates it
                keyed = all("idempotency-key" in m.get("headers", {}) for m in route.get("match") or [{}])
                safe = SAFE_FOR_KEYED_WRITES if keyed else SAFE_FOR_WRITES
                assert retry_on <= safe, f"{where}: retries writes on {retry_on - safe}"


def test_retry_budget_fits_the_order_service_deadline(deployed):
    """order-svc -> user-svc: the mesh must give up before the app's own per-attempt timeout,
    and all app attempts (each one retried by the mesh) must fit the app's deadline."""
    client = dict(CONTRACT_USER_SVC_CLIENT)
    order_env = deployed.container_env(app_container(deployed.get("Deployment", "order-svc")))
    for key in client:
        if key in order_env:
            client[key] = type(client[key])(order_env[key])
    app_attempts = int(client["USER_SVC_ATTEMPTS"])

    vs = next(v for v in mesh_virtual_services(deployed) if service_name(v["spec"]["hosts"][0]) == "user-svc")
    reads = [r for r in vs["spec"]["http"] if (route_methods(r) or {"GET"}) >= {"GET"}]
    assert reads, "no route for the order service's GET /users/<id>"
    route = reads[0]  # first match wins in Istio
    timeout = parse_duration(route["timeout"])
    per_try = parse_duration(route["retries"]["perTryTimeout"])
    mesh_tries = 1 + route["retries"]["attempts"]

    assert mesh_tries * per_try <= timeout + EPSILON
    assert timeout <= client["USER_SVC_READ_TIMEOUT"] + EPSILON, "mesh outlives the app's per-attempt timeout"
    assert app_attempts * timeout <= client["USER_SVC_DEADLINE"] + EPSILON, "app attempts x mesh timeout > deadline"
    worst_case_requests = app_attempts * mesh_tries
    assert worst_case_requests <= 9, f"{worst_case_requests} requests reach user-svc in the worst case"


def test_reads_from_order_svc_are_retried_on_unavailability(deployed):
    vs = next(v for v in mesh_virtual_services(deployed) if service_name(v["spec"]["hosts"][0]) == "user-svc")
    route = next(r for r in vs["spec"]["http"] if route_methods(r) and "GET" in route_methods(r))
    retry_on = set(route["retries"]["retryOn"].split(","))
    assert {"connect-failure", "reset", "gateway-error"} <= retry_on
    assert route["retries"]["attempts"] == 2


def test_outlier_detection_ejects_for_local_failures_only(deployed):
    """A 503 is what every order pod answers when the user service is down: no 5xx-based ejection
    (an unset consecutive5xxErrors would leave Envoy's default of 5, enforced)."""
    for dr in deployed.of_kind("DestinationRule"):
        outliers = dr["spec"]["trafficPolicy"]["outlierDetection"]
        assert outliers["consecutive5xxErrors"] == 0
        assert outliers.get("consecutiveGatewayErrors", 0) == 0
        assert outliers["splitExternalLocalOriginErrors"] is True
        assert outliers["consecutiveLocalOriginFailures"] > 0


def test_config_maps_and_secrets_referenced_exist_or_are_documented(deployed, repo_root):
    """Every Secret a pod uses is made by hand as docs/deploy.md says, or by the CloudNativePG
    operator for a Cluster of the overlay (<cluster>-app for its owner, <cluster>-ca)."""
    configmaps = deployed.names("ConfigMap")
    doc = (repo_root / "docs" / "deploy.md").read_text()
    by_operator = set()
    by_hand = {"meshed-secrets"}
    for cluster in deployed.of_kind("Cluster"):
        by_operator |= {f"{cluster['metadata']['name']}-app", f"{cluster['metadata']['name']}-ca"}
        by_hand |= {role["passwordSecret"]["name"] for role in cluster["spec"].get("managed", {}).get("roles", [])}
    for name in by_hand:
        assert f"kubectl -n meshed create secret generic {name}" in doc, f"docs/deploy.md: how to create {name}"
    for w in deployed.workloads():
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in by_hand | by_operator, ref
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in by_hand | by_operator, volume


# The ingress gateway's pods: 1 in the demo profile (gateways.istio-ingressgateway.autoscaleEnabled:
# false, manifests/helm-profiles/demo.yaml). Raise it here if the gateway autoscales.
INGRESS_GATEWAY_PODS = 1


def test_concurrent_retries_fit_the_callee_at_the_hpa_maximum(manifests, repo_root):
    """connectionPool.http.maxRetries is an Envoy circuit breaker, held by each calling proxy for
    itself: the real bound on concurrent retries to a service is maxRetries x calling proxies. At the
    callers' HPA maximum it must stay within half the callee's request slots at its HPA minimum
    (pods x gunicorn workers x connections per worker), and istio/README.md must state it."""
    deployed = manifests("k8s/overlays/production", ISTIO_DIR)
    callers = {"user-svc": ["order-svc"], "order-svc": []}  # in-mesh callers, besides the ingress gateway
    readme = (repo_root / "istio" / "README.md").read_text()
    for service, mesh_callers in callers.items():
        rule = next(d for d in deployed.of_kind("DestinationRule") if service_name(d["spec"]["host"]) == service)
        max_retries = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["maxRetries"]
        proxies = INGRESS_GATEWAY_PODS + sum(
            deployed.get("HorizontalPodAutoscaler", c)["spec"]["maxReplicas"] for c in mesh_callers
        )
        env = deployed.container_env(app_container(deployed.get("Deployment", service)))
        slots = (
            deployed.get("HorizontalPodAutoscaler", service)["spec"]["minReplicas"]
            * int(env["GUNICORN_WORKERS"])
            * int(env["GUNICORN_WORKER_CONNECTIONS"])
        )
        bound = proxies * max_retries
        assert bound <= slots / 2, f"{service}: {bound} concurrent retries for {slots} request slots"
        assert f"{service}: {proxies} × {max_retries} = **{bound}**" in readme, (
            f"README does not state {service}'s bound"
        )


def test_fluent_bit_tails_the_app_containers_and_nothing_else(render, repo_root):
    """The tail input's globs, against the file names the kubelet gives the rendered pods' logs:
    /var/log/containers/<pod>_<namespace>_<container>-<container id>.log."""
    config = yaml.safe_load((repo_root / "fluent-bit" / "fluent-bit.yaml").read_text())
    (tail,) = [i for i in config["pipeline"]["inputs"] if i["name"] == "tail"]
    globs = [os.path.basename(path) for path in tail["path"].split(",")]
    for doc in render("k8s/overlays/production"):
        if doc["kind"] != "Deployment":
            continue
        pod = f"{doc['metadata']['name']}-5d8f7c9b64-x7k2p"  # <deployment>-<replicaset hash>-<suffix>
        namespace = doc["metadata"]["namespace"]
        for container in [*doc["spec"]["template"]["spec"]["containers"], {"name": "istio-proxy"}]:
            log_file = f"{pod}_{namespace}_{container['name']}-{'0' * 64}.log"
            tailed = any(fnmatch.fnmatch(log_file, pattern) for pattern in globs)
            assert tailed == (container["name"] == "app"), (log_file, globs)
