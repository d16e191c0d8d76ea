"""The production pods' requests, limits and HPA agree with what docs/sizing.md measured: no timing
here, only the manifests against the documented figures (bench/pod_usage.py measures them)."""

import math
import re

import pytest
from deploy_support import APPS, REPO_ROOT, app_container

PRODUCTION = "k8s/overlays/production"
SIZING = REPO_ROOT / "docs" / "sizing.md"


def documented_usage() -> dict[tuple[str, str], tuple[int, int]]:
    """{(service, phase): (millicores, MiB)} from the table in docs/sizing.md."""
    rows = re.findall(r"^\| (user-svc|order-svc) \| (\w+) \| (\d+) \| (\d+) \|$", SIZING.read_text(), re.MULTILINE)
    usage = {(service, phase): (int(cpu), int(mib)) for service, phase, cpu, mib in rows}
    assert {phase for _, phase in usage} == {"rest", "light", "saturated"} and len(usage) == 6, usage
    return usage


def millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def mebibytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, quantity
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


@pytest.mark.parametrize("app", APPS)
def test_requests_and_limits_follow_the_measurements(manifests, app):
    usage = documented_usage()
    resources = app_container(manifests(PRODUCTION).get("Deployment", app))["resources"]
    light_cpu, _ = usage[(app, "light")]
    peak_memory = max(mib for (service, _), (_, mib) in usage.items() if service == app)
    # The CPU request is what a pod uses under ordinary (light) load, not a fraction of it.
    assert light_cpu <= millicores(resources["requests"]["cpu"]) <= 2 * light_cpu
    # Memory: the request covers the largest working set with a margin, the limit leaves room above it.
    assert 1.2 * peak_memory <= mebibytes(resources["requests"]["memory"]) <= 2 * peak_memory
    assert mebibytes(resources["limits"]["memory"]) >= 2 * peak_memory
    assert millicores(resources["limits"]["cpu"]) >= 2 * millicores(resources["requests"]["cpu"])


@pytest.mark.parametrize("app", APPS)
def test_hpa_stays_at_its_minimum_at_rest_and_under_light_load(manifests, app):
    """The HPA's formula (desired = ceil(current x usage / target)) on the measured usage: at rest and
    under the light load it wants no more than its minimum; the target sits below the CPU limit."""
    m = manifests(PRODUCTION)
    hpa = m.get("HorizontalPodAutoscaler", app)["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "ContainerResource" and metric["containerResource"]["container"] == "app"
    target = metric["containerResource"]["target"]
    assert target["type"] == "AverageValue"
    target_millicores = millicores(target["averageValue"])
    usage = documented_usage()
    for phase in ("rest", "light"):
        cpu, _ = usage[(app, phase)]
        desired = math.ceil(hpa["minReplicas"] * cpu / target_millicores)
        assert desired <= hpa["minReplicas"], f"{app} would scale out {phase}: {desired} pods"
    limit = millicores(app_container(m.get("Deployment", app))["resources"]["limits"]["cpu"])
    assert usage[(app, "light")][0] < target_millicores <= limit / 2


@pytest.mark.parametrize("app", APPS)
def test_sidecar_request_covers_what_the_mesh_rehearsal_measured(manifests, app):
    """docs/sizing.md's sidecar table (bench/pod_usage.py --mesh): the injector's annotations request at
    least the light load's CPU and twice the largest working set (a real istio-proxy uses more)."""
    rows = re.findall(r"^\| (user-svc|order-svc) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", SIZING.read_text(), re.M)
    measured = {service: (int(light), int(mib)) for service, _rest, light, _saturated, mib in rows}
    assert set(measured) == set(APPS), rows
    annotations = manifests(PRODUCTION).get("Deployment", app)["spec"]["template"]["metadata"]["annotations"]
    light_cpu, peak_memory = measured[app]
    assert millicores(annotations["sidecar.istio.io/proxyCPU"]) >= light_cpu
    assert mebibytes(annotations["sidecar.istio.io/proxyMemory"]) >= 2 * peak_memory
