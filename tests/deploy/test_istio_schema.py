"""Every Istio object validates against the openAPIV3Schema of its CRD (served version matching
its apiVersion) from schemas/istio-crds.gen.yaml, with unknown fields rejected."""

import copy

import pytest
import yaml
from deploy_support import ISTIO_DIR, K8S_OVERLAYS, strict_schema


def test_istio_objects_validate(render, istio_validator):
    objects = render(ISTIO_DIR)
    assert objects
    problems = []
    for obj in objects:
        assert istio_validator.handles(obj), f"non-Istio object in {ISTIO_DIR}/: {obj['kind']}"
        for message in istio_validator.errors(obj):
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {message}")
    assert not problems, "\n".join(problems)


def test_expected_istio_kinds_are_present(render):
    kinds = {o["kind"] for o in render(ISTIO_DIR)}
    assert {
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "Telemetry",
    } <= kinds


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_no_istio_objects_hide_in_k8s_overlays(render, istio_validator, overlay):
    # They would not be schema-checked there; keep them all in istio/.
    assert not [o["kind"] for o in render(overlay) if istio_validator.handles(o)]


def _virtual_service(render):
    return copy.deepcopy(
        next(o for o in render(ISTIO_DIR) if o["kind"] == "VirtualService" and o["spec"]["http"][0].get("retries"))
    )


def test_validator_rejects_unknown_fields(render, istio_validator):
    vs = _virtual_service(render)
    assert istio_validator.errors(vs) == []

    typo = copy.deepcopy(vs)
    typo["spec"]["http"][0]["retries"]["retryon"] = "5xx"  # should be retryOn
    errors = istio_validator.errors(typo)
    assert errors and any("retryon" in e for e in errors), errors

    top = copy.deepcopy(vs)
    top["spec"]["hostz"] = ["x"]
    assert any("hostz" in e for e in istio_validator.errors(top))

    extra_root = copy.deepcopy(vs)
    extra_root["specs"] = {}
    assert istio_validator.errors(extra_root)

    meta = copy.deepcopy(vs)
    meta["metadata"]["lables"] = {"a": "b"}
    assert istio_validator.errors(meta)


def test_validator_rejects_wrong_types_and_enums(render, istio_validator):
    vs = _virtual_service(render)
    vs["spec"]["http"][0]["retries"]["attempts"] = "two"
    assert istio_validator.errors(vs)

    pa = copy.deepcopy(next(o for o in render(ISTIO_DIR) if o["kind"] == "PeerAuthentication"))
    pa["spec"]["mtls"]["mode"] = "STRICTEST"
    assert istio_validator.errors(pa)


def test_validator_rejects_unknown_kinds_and_versions(render, istio_validator):
    vs = _virtual_service(render)
    vs["apiVersion"] = "networking.istio.io/v9"
    assert istio_validator.errors(vs)
    vs["apiVersion"], vs["kind"] = "networking.istio.io/v1", "VirtualServise"
    assert istio_validator.errors(vs)


def test_strict_schema_keeps_open_maps_and_preserved_fields():
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "spec": {"type": "object", "properties": {"x": {"type": "string"}}, "oneOf": [{"required": ["x"]}]},
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in strict["properties"]["status"]
    assert strict["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["spec"]["oneOf"][0]


def test_telemetry_providers_are_declared_at_install(render, repo_root, istio_validator):
    """istio/telemetry.yaml and the mesh-wide istio/install/mesh-telemetry.yaml may only name providers
    that istio/install/ declares (or Istio's built-in `envoy` access log provider). Tracing is
    mesh-wide (root namespace, no selector) so that the ingress gateway is traced and samples like
    the sidecars, and the sampling is what the README says."""
    install = yaml.safe_load((repo_root / "istio" / "install" / "demo-tracing.yaml").read_text())
    assert install["kind"] == "IstioOperator" and install["spec"]["profile"] == "demo"
    # enableTracing without a Telemetry would sample at PILOT_TRACE_SAMPLING (100 in demo) with no tracer
    assert "enableTracing" not in install["spec"]["meshConfig"]
    declared = {p["name"] for p in install["spec"]["meshConfig"]["extensionProviders"]}
    mesh_wide = list(yaml.safe_load_all((repo_root / "istio" / "install" / "mesh-telemetry.yaml").read_text()))
    for telemetry in mesh_wide:
        assert istio_validator.errors(telemetry) == []
        assert telemetry["metadata"]["namespace"] == "istio-system" and "selector" not in telemetry["spec"]
    telemetries = [o for o in render(ISTIO_DIR) if o["kind"] == "Telemetry"] + mesh_wide
    sampling = set()
    for telemetry in telemetries:
        for provider in (p for t in telemetry["spec"].get("tracing", []) for p in t.get("providers", [])):
            assert provider["name"] in declared, provider
        for provider in (p for a in telemetry["spec"].get("accessLogging", []) for p in a.get("providers", [])):
            assert provider["name"] in declared | {"envoy"}, provider
        sampling |= {t["randomSamplingPercentage"] for t in telemetry["spec"].get("tracing", [])}
    (percent,) = sampling
    assert 0 < percent <= 100
    assert f"{percent:g} %" in (repo_root / "istio" / "README.md").read_text()
