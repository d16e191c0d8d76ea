"""What every workload of the overlays must carry: labels, resources, probes, hardening, Istio
and Prometheus annotations, graceful shutdown. (checkov covers part of this too; these are the
project's own rules, with the exact values the images and the contract need.)"""

import re

import pytest
import yaml
from deploy_support import APPS, K8S_OVERLAYS, app_container, parse_duration

APP_UID = 10001
ISTIO_PROXY_UID = 1337


@pytest.fixture(params=K8S_OVERLAYS)
def overlay(request, manifests):
    return manifests(request.param)


def all_workloads(m):
    assert {w["metadata"]["name"] for w in m.of_kind("Deployment")} == set(APPS)
    return m.workloads()


def test_pod_labels_and_selectors(overlay):
    for app in APPS:
        dep = overlay.get("Deployment", app)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["app"] == app
        assert labels["version"] == "v1"
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # the selector is immutable: a label that changes per release cannot be in it
        assert "version" not in dep["spec"]["selector"]["matchLabels"]


def test_service_accounts(overlay):
    accounts = overlay.names("ServiceAccount")
    for w in all_workloads(overlay):
        pod = w["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in accounts
        assert pod["automountServiceAccountToken"] is False
    for app in APPS:
        assert overlay.get("Deployment", app)["spec"]["template"]["spec"]["serviceAccountName"] == app
        assert overlay.get("ServiceAccount", app)["automountServiceAccountToken"] is False


def test_resources_requests_and_limits(overlay):
    for w in all_workloads(overlay):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{w['metadata']['name']}: {kind}"


def test_probes(overlay):
    for w in all_workloads(overlay):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{w['metadata']['name']}/{c['name']}: no {probe}"
    for app in APPS:
        c = app_container(overlay.get("Deployment", app))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["port"] == "http"
        # /readyz bounds its own check at 1.5 s (svc_common/storage/readiness.py, CHECK_SECONDS + 0.5):
        # the kubelet waits longer than that, and one slow or failed answer leaves the pod in the Service.
        readiness = c["readinessProbe"]
        assert readiness["timeoutSeconds"] >= 3
        assert readiness["failureThreshold"] >= 3 and readiness.get("successThreshold", 1) == 1


def test_security_contexts(overlay):
    for w in all_workloads(overlay):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] == APP_UID and psc["runAsGroup"] == APP_UID, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc.get("runAsUser", APP_UID) == APP_UID != ISTIO_PROXY_UID
            assert sc.get("runAsGroup", APP_UID) == APP_UID
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_writable_dirs_are_empty_dirs(overlay):
    for app in APPS:
        dep = overlay.get("Deployment", app)
        c = app_container(dep)
        env = overlay.container_env(c)
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        multiproc = env["PROMETHEUS_MULTIPROC_DIR"]
        for path in ("/tmp", multiproc):
            assert path in mounts, f"{app}: {path} not mounted"
            assert "emptyDir" in volumes[mounts[path]], f"{app}: {path} is not an emptyDir"
            assert volumes[mounts[path]]["emptyDir"].get("sizeLimit"), f"{app}: {path} unbounded"


def test_topology_spread_across_nodes(overlay):
    for app in APPS:
        pod = overlay.get("Deployment", app)["spec"]["template"]["spec"]
        spreads = pod["topologySpreadConstraints"]
        assert any(
            s["topologyKey"] == "kubernetes.io/hostname" and s["labelSelector"]["matchLabels"] == {"app": app}
            for s in spreads
        )


def test_graceful_shutdown(overlay):
    for app in APPS:
        dep = overlay.get("Deployment", app)
        pod = dep["spec"]["template"]["spec"]
        c = app_container(dep)
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep" and len(pre_stop) == 2, pre_stop
        sleep = float(pre_stop[1])
        graceful = float(overlay.container_env(c)["GUNICORN_GRACEFUL_TIMEOUT"])
        grace = pod["terminationGracePeriodSeconds"]
        # A classic sidecar gets SIGTERM with the app and exits terminationDrainDuration later
        # (pilot-agent, pkg/envoy/agent.go): it must outlive the app, and the kubelet both.
        proxy_config = yaml.safe_load(dep["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
        drain = parse_duration(proxy_config["terminationDrainDuration"])
        assert drain > sleep + graceful, f"{app}: sidecar drains {drain}s < preStop {sleep}s + gunicorn {graceful}s"
        assert grace > drain, f"{app}: grace period {grace}s <= sidecar drain {drain}s"
        # zero-downtime rollouts
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_istio_and_prometheus_annotations(overlay):
    for app in APPS:
        dep = overlay.get("Deployment", app)
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        proxy_config = yaml.safe_load(annotations["proxy.istio.io/config"])
        assert proxy_config["holdApplicationUntilProxyStarts"] is True
        # the demo profile would request 10m/40Mi for the proxy that every request crosses twice
        assert annotations["sidecar.istio.io/proxyCPU"] and annotations["sidecar.istio.io/proxyMemory"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        container_ports = {str(p["containerPort"]) for p in app_container(dep)["ports"]}
        assert annotations["prometheus.io/port"] in container_ports
        assert annotations["kubectl.kubernetes.io/default-container"] == "app"


def test_container_environment(overlay):
    for app in APPS:
        c = app_container(overlay.get("Deployment", app))
        env = overlay.container_env(c)
        assert env["PORT"] == str(c["ports"][0]["containerPort"]) == "8000"
        assert env["SERVICE_VERSION"] == c["image"].rpartition(":")[2]
        assert env["REPOSITORY_BACKEND"] in ("memory", "postgres")
        if int(env["GUNICORN_WORKERS"]) > 1:
            assert env.get("PROMETHEUS_MULTIPROC_DIR"), f"{app}: several workers need PROMETHEUS_MULTIPROC_DIR"
            # svc_common/server/gunicorn_conf.py refuses to start several workers over the in-memory store
            assert env["REPOSITORY_BACKEND"] == "postgres", f"{app}: several workers need the postgres backend"
        assert env["DJANGO_DEBUG"] == "false"
    order_env = overlay.container_env(app_container(overlay.get("Deployment", "order-svc")))
    assert re.fullmatch(r"http://user-svc(\.meshed(\.svc\.cluster\.local)?)?(:80)?", order_env["USER_SVC_URL"])


def test_checkov_skips_carry_reasons(overlay):
    for obj in overlay.objects:
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), value
                assert len(reason.strip()) >= 20, f"{obj['metadata']['name']}: {key} needs a written reason"
