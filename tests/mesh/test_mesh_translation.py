"""mesh_rehearsal's translation of istio/ and k8s/, without Docker: what each kind becomes, that
Envoy 1.40 accepts every bootstrap it makes, that fields it does not translate are refused, and that
the certificates are shaped as Istio's CA issues them. (tests/containers/test_mesh_pods.py runs it.)"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import subprocess
from pathlib import Path

import pytest

from mesh_rehearsal import (
    authorization_policy,
    bootstrap,
    capture,
    certificates,
    destination_rule,
    gateway,
    model,
    peer_authentication,
    runtime,
    virtual_service,
)
from testsupport.envoy import envoy_binary

GATEWAY_PRINCIPAL = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
ORDER_PRINCIPAL = "spiffe://cluster.local/ns/meshed/sa/order-svc"


@pytest.fixture(scope="module")
def planned():
    """A planned mesh (no Docker): its state and mesh-wide configuration."""
    images = {k: k for k in ("BASE_IMAGE", "USER_SVC_IMAGE", "ORDER_SVC_IMAGE", "CLIENT_IMAGE")}
    mesh = runtime.Mesh(Path("/nonexistent"), images)
    mesh.manifests = model.rendered_manifests()
    mesh.state = mesh.plan(ipaddress.ip_network("10.213.250.0/24"))
    mesh.collector_port = 4318
    mesh.config = mesh.mesh_config()
    return mesh


def pod(planned, name):
    state = planned.state.pod(name)
    return model.Pod(state.name, state.app, state.address, state.labels, state.service_account)


def listener(config, name):
    (found,) = [entry for entry in config["static_resources"]["listeners"] if entry["name"] == name]
    return found


def hcm_filters(chain):
    (hcm,) = [f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    return hcm["typed_config"]


def test_every_bootstrap_is_accepted_by_envoy(planned, tmp_path):
    ca = certificates.RootCA(tmp_path / "ca")
    certificates.write_secrets(tmp_path / "proxy" / "sds", ca.issue("meshed", "user-svc"), ca.certificate)
    configs = {
        f"{p.name}-{mode}": bootstrap.sidecar(pod(planned, p.name), planned.config, mode)
        for p in planned.state.pods
        if p.sidecar
        for mode in (None, "PERMISSIVE")
    }
    ports = {"admin": 1, "prometheus": 2, "health": 3}
    configs["gateway"] = gateway.gateway_bootstrap(planned.config, ("127.0.0.1", 4), ports)
    for name, config in configs.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config).replace(bootstrap.PROXY_DIR, str(tmp_path / "proxy")))
        result = subprocess.run(
            [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"


def test_user_svc_gets_one_allow_filter_with_a_policy_per_rule(planned):
    config = bootstrap.sidecar(pod(planned, "user-svc-0"), planned.config)
    chain = next(c for c in listener(config, "virtualInbound")["filter_chains"] if c["name"] == "0.0.0.0_8000")
    filters = [f for f in hcm_filters(chain)["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    assert len(filters) == 1
    rules = filters[0]["typed_config"]["rules"]
    assert rules["action"] == "ALLOW"
    assert sorted(rules["policies"]) == ["ns[meshed]-policy[user-svc]-rule[0]", "ns[meshed]-policy[user-svc]-rule[1]"]
    gateway_rule = rules["policies"]["ns[meshed]-policy[user-svc]-rule[0]"]
    assert gateway_rule["principals"] == [
        {
            "and_ids": {
                "ids": [{"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": GATEWAY_PRINCIPAL}}}]}}]
            }
        }
    ]
    assert gateway_rule["permissions"] == [
        {
            "and_rules": {
                "rules": [
                    {
                        "or_rules": {
                            "rules": [
                                {"url_path": {"path": {"exact": "/users"}}},
                                {"url_path": {"path": {"prefix": "/users/"}}},
                            ]
                        }
                    }
                ]
            }
        }
    ]
    order_rule = rules["policies"]["ns[meshed]-policy[user-svc]-rule[1]"]
    (permission,) = order_rule["permissions"]
    assert {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}} in (
        permission["and_rules"]["rules"]
    )
    assert ORDER_PRINCIPAL in json.dumps(order_rule["principals"])


def test_a_workload_selected_only_by_allow_nothing_is_denied_everything(planned):
    # sleep has no ALLOW policy of its own: the empty allow-nothing still makes an ALLOW filter, with
    # no policy that can match.
    (only,) = authorization_policy.http_filters(planned.config.kind("AuthorizationPolicy"), "meshed", {"app": "sleep"})
    assert only["typed_config"]["rules"] == {"action": "ALLOW", "policies": {}}


def test_outbound_listeners_carry_no_rbac_and_inbound_puts_rbac_before_the_router(planned):
    config = bootstrap.sidecar(pod(planned, "order-svc-0"), planned.config)
    outbound = hcm_filters(listener(config, "0.0.0.0_80")["filter_chains"][0])
    assert [f["name"] for f in outbound["http_filters"]] == [
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    chain = next(c for c in listener(config, "virtualInbound")["filter_chains"] if c["name"] == "0.0.0.0_8000")
    inbound = hcm_filters(chain)
    assert [f["name"] for f in inbound["http_filters"]] == [
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.rbac",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    assert inbound["normalize_path"] is True and inbound["path_with_escaped_slashes_action"] == "KEEP_UNCHANGED"
    assert inbound["forward_client_cert_details"] == "APPEND_FORWARD"


def test_strict_admits_tls_only_and_permissive_plaintext_too(planned):
    def transports(mode):
        config = bootstrap.sidecar(pod(planned, "user-svc-0"), planned.config, mode)
        chains = listener(config, "virtualInbound")["filter_chains"]
        return [c["filter_chain_match"].get("transport_protocol") for c in chains if c["name"] == "0.0.0.0_8000"]

    assert transports(None) == ["tls"]  # istio/peerauthentication.yaml: STRICT
    assert transports("PERMISSIVE") == ["tls", "raw_buffer"]


def test_peer_authentication_precedence():
    namespace = {"metadata": {"name": "default", "namespace": "meshed"}, "spec": {"mtls": {"mode": "STRICT"}}}
    workload = {
        "metadata": {"name": "legacy", "namespace": "meshed"},
        "spec": {"selector": {"matchLabels": {"app": "legacy"}}, "mtls": {"mode": "PERMISSIVE"}},
    }
    root = {"metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "DISABLE"}}}
    assert peer_authentication.mode_for([namespace, workload, root], "meshed", {"app": "legacy"}) == "PERMISSIVE"
    assert peer_authentication.mode_for([namespace, workload, root], "meshed", {"app": "user-svc"}) == "STRICT"
    assert peer_authentication.mode_for([root], "meshed", {"app": "user-svc"}) == "DISABLE"
    assert peer_authentication.mode_for([], "meshed", {"app": "user-svc"}) == "PERMISSIVE"


def test_the_client_side_verifies_the_destination_identity_with_istio_sni(planned):
    (service,) = [s for s in planned.config.services if s.name == "user-svc"]
    rule = next(r for r in planned.config.kind("DestinationRule") if r["metadata"]["name"] == "user-svc")
    clusters = {c["name"]: c for c in destination_rule.outbound_clusters(service, rule, bootstrap.SECRETS_DIR)}
    subset = clusters["outbound|80|v1|user-svc.meshed.svc.cluster.local"]
    tls = subset["transport_socket"]["typed_config"]
    assert tls["sni"] == "outbound_.80_.v1_.user-svc.meshed.svc.cluster.local"
    sans = tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert sans["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/meshed/sa/user-svc"}}
    ]
    endpoints = subset["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert sorted(e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints) == [8000, 8000]
    assert subset["outlier_detection"]["consecutive_local_origin_failure"] == 3


def test_the_gateway_routes_only_the_edge_paths(planned):
    config = gateway.gateway_bootstrap(planned.config, ("127.0.0.1", 8080), {"admin": 1, "prometheus": 2, "health": 3})
    (entry,) = [entry for entry in config["static_resources"]["listeners"] if entry["name"] == "0.0.0.0_80"]
    hcm = hcm_filters(entry["filter_chains"][0])
    (host,) = hcm["route_config"]["virtual_hosts"]
    assert [r["match"]["prefix"] for r in host["routes"]] == ["/users", "/users", "/orders", "/orders"]
    assert hcm["use_remote_address"] is True


@pytest.mark.parametrize(
    ("kind", "name", "change"),
    [
        ("VirtualService", "user-svc", lambda o: o["spec"]["http"][0].update(mirror={"host": "x"})),
        ("VirtualService", "user-svc", lambda o: o["spec"]["http"][0]["match"][0].update(queryParams={"a": {}})),
        ("DestinationRule", "user-svc", lambda o: o["spec"]["trafficPolicy"]["tls"].update(mode="SIMPLE")),
        ("AuthorizationPolicy", "user-svc", lambda o: o["spec"]["rules"][0].update(when=[{"key": "x"}])),
        ("AuthorizationPolicy", "user-svc", lambda o: o["spec"].update(action="CUSTOM")),
        ("PeerAuthentication", "default", lambda o: o["spec"].update(portLevelMtls={"8000": {}})),
        ("Gateway", "meshed-gateway", lambda o: o["spec"]["servers"][0].update(tls={"mode": "SIMPLE"})),
    ],
)
def test_fields_not_translated_are_refused(planned, kind, name, change):
    config = copy.deepcopy(planned.config)
    (obj,) = [o for o in config.istio_objects if o["kind"] == kind and o["metadata"]["name"] == name]
    bootstrap.sidecar(pod(planned, "user-svc-0"), config)  # translated as it is
    gateway.gateway_bootstrap(config, ("127.0.0.1", 8080), {"admin": 1, "prometheus": 2, "health": 3})
    change(obj)

    def translate_everything():
        bootstrap.sidecar(pod(planned, "user-svc-0"), config)
        gateway.gateway_bootstrap(config, ("127.0.0.1", 8080), {"admin": 1, "prometheus": 2, "health": 3})

    with pytest.raises(NotImplementedError):
        translate_everything()


def test_outbound_routes_follow_the_virtual_service_in_order(planned):
    (service,) = [s for s in planned.config.services if s.name == "user-svc"]
    config = virtual_service.outbound_route_config(80, planned.config.services, planned.config.kind("VirtualService"))
    (host,) = [h for h in config["virtual_hosts"] if h["name"] == "user-svc.meshed.svc.cluster.local:80"]
    assert host["domains"][0] == service.host and service.address in host["domains"]
    assert [r["name"] for r in host["routes"]] == ["reads", "reads", "idempotent-writes", "writes"]
    reads = host["routes"][0]["route"]
    assert reads["cluster"] == "outbound|80|v1|user-svc.meshed.svc.cluster.local"
    assert reads["timeout"] == "0.900s" and reads["retry_policy"]["per_try_timeout"] == "0.300s"
    assert config["virtual_hosts"][-1]["name"] == "allow_any"


# The nat part of istio-iptables' golden files (github.com/istio/istio, Apache-2.0, at commit e8f9bf5
# for the first two, 461f85b and 8b6c97a for the others), with the arguments each test case gives.
_COMMON_OUTPUT = """\
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
"""
_HEAD = """\
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
"""
ISTIO_IPTABLES_GOLDEN = {
    # testdata/inbound-wildcard-exclude.golden: -b '*' -d 22,80,443
    "inbound-wildcard-exclude": (
        capture.CaptureArguments("*", ("22", "80", "443"), (), ""),
        _HEAD
        + """\
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 22,80,443 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
"""
        + _COMMON_OUTPUT,
    ),
    # testdata/outbound-ports-exclude.golden: -o 22,80,443
    "outbound-ports-exclude": (
        capture.CaptureArguments("", (), ("22", "80", "443"), ""),
        _HEAD
        + """\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,80,443 -j RETURN
-A ISTIO_OUTPUT -p udp -m multiport --dports 22,80,443 -j RETURN
"""
        + _COMMON_OUTPUT,
    ),
    # testdata/inbound-ports-wildcard.golden: -b '*'
    "inbound-ports-wildcard": (
        capture.CaptureArguments("*", (), (), ""),
        _HEAD
        + """\
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
"""
        + _COMMON_OUTPUT,
    ),
    # testdata/outbound-ports-exclude-single.golden: -o 22
    "outbound-ports-exclude-single": (
        capture.CaptureArguments("", (), ("22",), ""),
        _HEAD
        + """\
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN
"""
        + _COMMON_OUTPUT,
    ),
}


@pytest.mark.parametrize("case", sorted(ISTIO_IPTABLES_GOLDEN))
def test_nat_rules_reproduce_istio_iptables_golden_files(case):
    arguments, golden = ISTIO_IPTABLES_GOLDEN[case]
    assert capture.nat_rules(arguments) == golden.splitlines()


def test_the_injected_pods_rules_combine_the_golden_cases():
    rules = capture.nat_rules()  # -b '*' -d 15090,15021,15020 -o 5432 -i '*'
    assert "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN" in rules
    assert rules.index("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN") < rules.index(
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"
    )
    assert rules[-1] == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"


def test_iptables_save_output_compares_equal_to_the_golden_form():
    saved = [
        "-N ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 "
        "-j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
    ]
    golden = [
        "-N ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
    ]
    assert capture.canonical(saved) == capture.canonical(golden)
    assert capture.canonical(saved) != capture.canonical(list(reversed(golden[1:])) + golden[:1])


def test_workload_certificates_are_shaped_as_istios_ca_issues_them(tmp_path):
    ca = certificates.RootCA(tmp_path)
    workload = ca.issue("meshed", "order-svc")
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text"], input=workload.certificate, capture_output=True, text=True
    ).stdout
    assert re.search(r"Subject:\s*\n", text), text  # empty subject
    assert "X509v3 Subject Alternative Name: critical" in text
    assert "URI:spiffe://cluster.local/ns/meshed/sa/order-svc" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text

    def valid_for(seconds: int) -> bool:  # openssl -checkend: still valid that many seconds from now
        check = ["openssl", "x509", "-noout", "-checkend", str(seconds)]
        return subprocess.run(check, input=workload.certificate, capture_output=True, text=True).returncode == 0

    assert valid_for(24 * 3600 - 120) and not valid_for(24 * 3600 + 120)  # 24 h
    (tmp_path / "leaf.pem").write_text(workload.certificate)
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root-cert.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr


def test_access_logs_follow_the_telemetry_and_mesh_config(planned):
    sidecar = bootstrap.sidecar(pod(planned, "user-svc-0"), planned.config)
    outbound = hcm_filters(listener(sidecar, "0.0.0.0_80")["filter_chains"][0])
    assert [log["name"] for log in outbound["access_log"]] == [
        "envoy.access_loggers.file",
        "envoy.access_loggers.stats",
    ]
    assert outbound["access_log"][0]["typed_config"]["path"] == "/dev/stdout"  # istio/telemetry.yaml: envoy
    config = copy.deepcopy(planned.config)
    config.istio_objects = [o for o in config.istio_objects if o["kind"] != "Telemetry"]
    config.access_log_file = None
    quiet = bootstrap.sidecar(pod(planned, "user-svc-0"), config)
    names = [log["name"] for log in hcm_filters(listener(quiet, "0.0.0.0_80")["filter_chains"][0])["access_log"]]
    assert names == ["envoy.access_loggers.stats"]  # Istio's metrics stay; no access log asked for
