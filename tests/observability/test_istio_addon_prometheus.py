"""The dashboards against the Prometheus that Istio's addon ships, replayed on loopback.

The addon scrapes every annotated pod under one job, ``kubernetes-pods``, and relabels it from the
pod's Kubernetes metadata (prometheus/istio-addon-kubernetes-pods.yml, copied from Istio). Here that
job's relabelling runs unchanged in a real Prometheus; the metadata Kubernetes service discovery
would hand it comes from the rendered production Deployments (pod labels, prometheus.io/*
annotations, plus what the sidecar injector adds), with the pods at the two running services. Every
dashboard query that has data locally must have data here too, per service.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from .dashboards import REPO_ROOT
from .prom import start_prometheus
from .test_prometheus_live import DATA_TIMEOUT, JOBS, _port, drive_traffic, local_and_cluster_queries

ADDON_JOB = REPO_ROOT / "prometheus" / "istio-addon-kubernetes-pods.yml"
# Labels istio's sidecar injector adds to every injected pod (pkg/kube/inject: security.istio.io/tlsMode,
# service.istio.io/canonical-name and -revision from the app/version labels).
INJECTED_LABELS = {"security.istio.io/tlsMode": "istio"}


def rendered_deployments() -> dict[str, dict]:
    kubectl = REPO_ROOT / ".venv" / "bin" / "kubectl"
    command = [str(kubectl) if kubectl.exists() else "kubectl", "kustomize", str(REPO_ROOT / "k8s/overlays/production")]
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment"}


def pod_metadata(deployment: dict, port: int, index: int) -> dict[str, str]:
    """The __meta_kubernetes_* labels Kubernetes service discovery gives one pod of ``deployment``,
    whose pod IP is 127.0.0.1 and whose scrape port is ``port`` (on a cluster the injector points
    prometheus.io/port at the sidecar's merged :15020, which serves the same app metrics)."""
    template = deployment["spec"]["template"]["metadata"]
    name = deployment["metadata"]["name"]
    labels = {**template["labels"], **INJECTED_LABELS, "pod-template-hash": "5d9c7b"}
    labels["service.istio.io/canonical-name"] = labels["app"]
    labels["service.istio.io/canonical-revision"] = labels.get("version", "latest")
    annotations = {**template["annotations"], "prometheus.io/port": str(port)}
    meta = {
        "__meta_kubernetes_namespace": deployment["metadata"]["namespace"],
        "__meta_kubernetes_pod_name": f"{name}-5d9c7b-{index:05d}",
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_node_name": "node-1",
    }
    for key, value in labels.items():
        meta["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    for key, value in annotations.items():
        if key.startswith("prometheus.io/"):
            meta["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return meta


def addon_config(running_services) -> str:
    (job,) = yaml.safe_load(ADDON_JOB.read_text())
    assert job["job_name"] == "kubernetes-pods" and job["kubernetes_sd_configs"] == [{"role": "pod"}]
    deployments = rendered_deployments()
    ports = {"user-svc": _port(running_services.user_url), "order-svc": _port(running_services.order_url)}
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [
        {"targets": ["127.0.0.1:1"], "labels": pod_metadata(deployments[app], port, i)}
        for i, (app, port) in enumerate(ports.items())
    ]
    job["scrape_interval"] = "1s"
    return yaml.safe_dump({"global": {"scrape_interval": "1s", "scrape_timeout": "800ms"}, "scrape_configs": [job]})


def test_every_local_panel_has_data_per_service_under_the_istio_addon_relabelling(running_services, tmp_path):
    with start_prometheus(tmp_path, 0, 0, config_text=addon_config(running_services)) as prometheus:
        prometheus.wait_for_targets_up(["kubernetes-pods"], timeout=30)
        drive_traffic(running_services.user_url, running_services.order_url, tag="addon")
        local, _cluster = local_and_cluster_queries()

        pending = prometheus.queries_without_data(dict(local), DATA_TIMEOUT)
        assert not pending, "no data under the addon's relabelling for:\n" + "\n".join(
            f"  {title}: {expr}" for title, expr in pending.items()
        )

        # One job for both services there; `app` (a pod label) is what tells them apart.
        series = prometheus.query("group by (job, app, namespace, pod) (process_resident_memory_bytes)")["result"]
        assert {s["metric"]["job"] for s in series} == {"kubernetes-pods"}
        assert {s["metric"]["app"] for s in series} == set(JOBS)
        assert {s["metric"]["namespace"] for s in series} == {"meshed"}
        print(f"\naddon relabelling: {len(local)} panel queries, all with data, per app {sorted(JOBS)}")
