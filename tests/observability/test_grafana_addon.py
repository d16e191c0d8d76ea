"""The provisioning path for Grafana as Istio's addon installs it (docs/deploy.md, "Dashboards"):
`kubectl apply -k grafana/` and a patch of the addon's Deployment, here applied offline to that
Deployment as Istio ships it (tests/observability/fixtures/, copied from samples/addons/grafana.yaml)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from .dashboards import DASHBOARD_DIR, REPO_ROOT

GRAFANA_DIR = REPO_ROOT / "grafana"
ADDON_DEPLOYMENT = Path(__file__).parent / "fixtures" / "istio-addon-grafana-deployment.yaml"
PATCH = GRAFANA_DIR / "addon" / "grafana-deployment-patch.yaml"


def kubectl(*args: str) -> str:
    binary = REPO_ROOT / ".venv" / "bin" / "kubectl"
    env = {**os.environ, "KUBECONFIG": os.devnull}  # offline: --local and kustomize need no cluster
    command = [str(binary) if binary.exists() else "kubectl", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout


def test_the_addon_grafana_loads_every_dashboard_through_the_patch():
    rendered = {o["metadata"]["name"]: o for o in yaml.safe_load_all(kubectl("kustomize", str(GRAFANA_DIR))) if o}
    dashboards = rendered["meshed-grafana-dashboards"]
    assert dashboards["metadata"]["namespace"] == "istio-system"
    assert {name: json.loads(text)["uid"] for name, text in dashboards["data"].items()} == {
        path.name: json.loads(path.read_text())["uid"] for path in DASHBOARD_DIR.glob("*.json")
    }
    (provider_file,) = rendered["meshed-grafana-dashboard-provider"]["data"].items()

    patched = yaml.safe_load(
        kubectl(
            "patch",
            "--local",
            "-f",
            str(ADDON_DEPLOYMENT),
            "--type",
            "strategic",
            "--patch-file",
            str(PATCH),
            "-o",
            "yaml",
        )
    )
    pod = patched["spec"]["template"]["spec"]
    (grafana,) = [c for c in pod["containers"] if c["name"] == "grafana"]
    mounts = grafana["volumeMounts"]
    assert len({m["mountPath"] for m in mounts}) == len(mounts), "two mounts on one path"
    volumes = {v["name"]: v for v in pod["volumes"]}
    original = yaml.safe_load(ADDON_DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    assert set(volumes) >= {v["name"] for v in original["volumes"]}, "the addon lost a volume"

    def mounted_from(config_map: str) -> list[dict]:
        names = [n for n, v in volumes.items() if v.get("configMap", {}).get("name") == config_map]
        return [m for m in mounts if m["name"] in names]

    provisioning = next(e["value"] for e in grafana["env"] if e["name"] == "GF_PATHS_PROVISIONING")
    (provider_mount,) = mounted_from("meshed-grafana-dashboard-provider")
    assert provider_mount["mountPath"] == f"{provisioning}/dashboards/{provider_file[0]}"
    assert provider_mount["subPath"] == provider_file[0]
    (provider,) = yaml.safe_load(provider_file[1])["providers"]
    (dashboards_mount,) = mounted_from("meshed-grafana-dashboards")
    assert provider["options"]["path"] == dashboards_mount["mountPath"]
    # the addon's own dashboard folders stay apart from ours
    others = [
        m["mountPath"] for m in mounts if m is not dashboards_mount and m["mountPath"].startswith("/var/lib/grafana/")
    ]
    assert not [p for p in others if p.startswith(dashboards_mount["mountPath"] + "/")], others
