"""The Istio -> Envoy translation of testsupport/envoy.py: what istiod >= 1.24 generates for the fields
it covers, a loud refusal of the rest, and a real Envoy accepting every cluster and route built from
istio/ (``envoy --mode validate``)."""

import copy
import json
import subprocess

import pytest

from testsupport.envoy import (
    ISTIO_DEFAULT_RETRY_ON,
    bootstrap,
    cluster_from_destination_rule,
    envoy_binary,
    http_listener,
    inbound_route,
    istio_object,
    retry_policy_from_istio,
    routes_from_virtual_service,
)

SERVICES = ("user-svc", "order-svc")


def test_no_retries_block_is_istiods_default_policy_without_503():
    policy = retry_policy_from_istio(None)
    assert policy["num_retries"] == 2
    assert policy["retry_on"] == ISTIO_DEFAULT_RETRY_ON
    assert "retriable_status_codes" not in policy  # istiod 1.24 dropped 503 (retry.go)
    assert policy["host_selection_retry_max_attempts"] == 5
    assert [p["name"] for p in policy["retry_host_predicate"]] == ["envoy.retry_host_predicates.previous_hosts"]


def test_explicit_retries_translate_and_zero_attempts_disable():
    policy = retry_policy_from_istio({"attempts": 3, "perTryTimeout": "250ms", "retryOn": "reset,503"})
    assert policy["num_retries"] == 3
    assert policy["per_try_timeout"] == "0.250s"
    assert policy["retry_on"] == "reset,retriable-status-codes" and policy["retriable_status_codes"] == [503]
    assert retry_policy_from_istio({"attempts": 2})["retry_on"] == ISTIO_DEFAULT_RETRY_ON
    assert retry_policy_from_istio({"attempts": 0}) is None


@pytest.mark.parametrize(
    "field",
    [{"retryIgnorePreviousHosts": False}, {"backoff": "25ms"}, {"retryRemoteLocalities": True}, {"retryon": "reset"}],
)
def test_retry_fields_not_translated_raise(field):
    with pytest.raises(NotImplementedError):
        retry_policy_from_istio({"attempts": 2, **field})


def test_inbound_route_has_no_timeout_and_two_reset_before_request_retries():
    route = inbound_route("inbound-app")["route"]
    assert route["timeout"] == "0s" and route["max_stream_duration"]["max_stream_duration"] == "0s"
    assert route["retry_policy"] == {"retry_on": "reset-before-request", "num_retries": 2}


def test_outbound_virtual_hosts_count_attempts_and_inbound_ones_do_not():
    for direction, expected in (("OUTBOUND", True), ("INBOUND", None)):
        listener = http_listener("l", [], direction)
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (virtual_host,) = hcm["route_config"]["virtual_hosts"]
        assert virtual_host.get("include_request_attempt_count") is expected


def test_keyed_writes_match_on_the_header_and_come_before_other_writes():
    routes = routes_from_virtual_service(istio_object("virtualservices.yaml", "VirtualService", "order-svc"), "o")
    names = [r["name"] for r in routes]
    assert names.index("idempotent-writes") < names.index("writes")
    (keyed,) = [r for r in routes if r["name"] == "idempotent-writes"]
    assert keyed["match"]["headers"] == [{"name": "idempotency-key", "string_match": {"safe_regex": {"regex": ".+"}}}]


def test_destination_rule_settings_become_cluster_settings():
    rule = istio_object("destinationrules.yaml", "DestinationRule", "user-svc")
    cluster = cluster_from_destination_rule(rule, "user-svc", ports=[1, 2])
    pool = rule["spec"]["trafficPolicy"]["connectionPool"]
    (threshold,) = cluster["circuit_breakers"]["thresholds"]
    assert threshold["max_retries"] == pool["http"]["maxRetries"]
    assert threshold["max_connections"] == pool["tcp"]["maxConnections"]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    outliers = cluster["outlier_detection"]
    assert outliers["split_external_local_origin_errors"] is True
    assert (outliers["consecutive_5xx"], outliers["enforcing_consecutive_5xx"]) == (0, 0)
    assert outliers["enforcing_consecutive_local_origin_failure"] == 100
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0.0}


def test_destination_rule_fields_not_translated_raise():
    rule = istio_object("destinationrules.yaml", "DestinationRule", "user-svc")
    for path, value in (
        (("trafficPolicy", "portLevelSettings"), []),
        (("trafficPolicy", "connectionPool", "http", "maxConcurrentStreams"), 10),
        (("trafficPolicy", "outlierDetection", "consecutiveErrors"), 1),
    ):
        broken = copy.deepcopy(rule)
        target = broken["spec"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(NotImplementedError):
            cluster_from_destination_rule(broken, "user-svc", ports=[1])
    with pytest.raises(NotImplementedError):  # mTLS and subsets are left out only when the caller says so
        cluster_from_destination_rule(rule, "user-svc", ports=[1], leave_out=())


def test_envoy_accepts_everything_built_from_istio(tmp_path):
    listeners, clusters = [], []
    for service in SERVICES:
        virtual_service = istio_object("virtualservices.yaml", "VirtualService", service)
        listeners.append(http_listener(f"to-{service}", routes_from_virtual_service(virtual_service, service)))
        rule = istio_object("destinationrules.yaml", "DestinationRule", service)
        clusters.append(cluster_from_destination_rule(rule, service, ports=[8000, 8001]))
    listeners.append(http_listener("inbound", [inbound_route(SERVICES[0])], "INBOUND"))
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap(listeners, clusters)))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
