"""Every kustomization renders with kubectl kustomize, and the overlays say what they claim."""

import re

import pytest
import yaml
from deploy_support import (
    APPS,
    K8S_OVERLAYS,
    NAMESPACE,
    RENDER_TARGETS,
    app_container,
    run_kustomize,
)

ALL_KUSTOMIZATIONS = ("k8s/base", *RENDER_TARGETS)


def test_base_alone_would_start(manifests):
    # Not applied alone, but its defaults must be a working combination too.
    m = manifests("k8s/base")
    for app in APPS:
        env = m.container_env(app_container(m.get("Deployment", app)))
        assert env["REPOSITORY_BACKEND"] == "memory" and env["GUNICORN_WORKERS"] == "1"
        assert m.get("Deployment", app)["spec"]["replicas"] == 1


@pytest.mark.parametrize("target", ALL_KUSTOMIZATIONS)
def test_kustomization_renders(target):
    proc = run_kustomize(target)
    assert proc.returncode == 0, f"kubectl kustomize {target}:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"{target} rendered nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_everything_lives_in_the_meshed_namespace(render, target):
    for obj in render(target):
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_namespace_has_istio_injection(manifests, overlay):
    ns = manifests(overlay).get("Namespace", NAMESPACE)
    assert ns is not None
    assert ns["metadata"]["labels"].get("istio-injection") == "enabled"


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_images_are_pinned(manifests, overlay):
    m = manifests(overlay)
    for w in m.workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and "/" not in tag, f"{image}: no tag"
            assert tag != "latest", f"{image}: latest is not a pin"
            assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[\w.]+)?", tag), f"{image}: tag is not a version"
    for app in APPS:
        image = app_container(m.get("Deployment", app))["image"]
        assert image == f"meshed/{app}:0.1.0"


def test_local_overlay(manifests):
    m = manifests("k8s/overlays/local")
    for app in APPS:
        dep = m.get("Deployment", app)
        assert dep["spec"]["replicas"] == 1
        env = m.container_env(app_container(dep))
        assert env["REPOSITORY_BACKEND"] == "memory"
        assert env["GUNICORN_WORKERS"] == "1"
        assert env["DEPLOY_ENV"] == "local"
    # The memory backend keeps data per pod: nothing may scale it out.
    assert not m.of_kind("HorizontalPodAutoscaler")
    assert not m.of_kind("StatefulSet")


def test_production_overlay(manifests):
    m = manifests("k8s/overlays/production")
    for app in APPS:
        dep = m.get("Deployment", app)
        # The HPA owns the count: a stated replicas would reset it on every apply.
        assert "replicas" not in dep["spec"]
        env = m.container_env(app_container(dep))
        assert env["REPOSITORY_BACKEND"] == "postgres"
        assert env["DEPLOY_ENV"] == "production"
        assert int(env["GUNICORN_WORKERS"]) >= 1

        hpa = m.get("HorizontalPodAutoscaler", app)
        assert hpa is not None, f"no HPA for {app}"
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", app)
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"], "HPA without metrics"

        pdb = m.get("PodDisruptionBudget", app)
        assert pdb is not None, f"no PodDisruptionBudget for {app}"
        assert pdb["apiVersion"] == "policy/v1"
        assert m.workloads_selected_by(pdb["spec"]["selector"]["matchLabels"]) == [dep]
        # one pod at a time, whatever the HPA scaled to (minAvailable would let all but one go at once)
        assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1} and "minAvailable" not in pdb["spec"]

    # Their PostgreSQL (the CloudNativePG Cluster) and how they reach it: tests/deploy/test_cnpg.py.
    assert m.get("Cluster", "meshed-pg") is not None


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_no_secret_values_are_committed(manifests, overlay):
    m = manifests(overlay)
    assert not m.of_kind("Secret"), "Secrets are created by hand (docs/deploy.md), never committed"
    for app in APPS:
        env = app_container(m.get("Deployment", app))["env"]
        key = [e for e in env if e["name"] == "DJANGO_SECRET_KEY"]
        assert len(key) == 1 and "value" not in key[0]
        assert key[0]["valueFrom"]["secretKeyRef"] == {"name": "meshed-secrets", "key": "DJANGO_SECRET_KEY"}
    for cm in m.of_kind("ConfigMap"):
        assert not any("SECRET" in k or "PASSWORD" in k for k in cm.get("data", {})), cm["metadata"]["name"]
