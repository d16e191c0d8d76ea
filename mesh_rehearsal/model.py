"""What istiod knows about the cluster, from the rendered ``k8s/`` manifests and ``istio/``: services
(host, port, target port, virtual address), their workloads' pods (address, labels, ServiceAccount),
and the Istio objects by kind. ``load_istio`` refuses kinds nothing here translates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ISTIO_DIR = ROOT / "istio"
NAMESPACE = "meshed"
CLUSTER_DOMAIN = "svc.cluster.local"
ISTIO_KINDS = {"VirtualService", "DestinationRule", "Gateway", "PeerAuthentication", "AuthorizationPolicy", "Telemetry"}
ISTIO_FILES = (
    "gateway.yaml",
    "virtualservices.yaml",
    "destinationrules.yaml",
    "peerauthentication.yaml",
    "authorizationpolicies.yaml",
    "telemetry.yaml",
    "install/mesh-telemetry.yaml",
)


@dataclass(frozen=True)
class Pod:
    name: str  # user-svc-0
    app: str  # the ``app`` label (the workload: one Deployment each)
    address: str
    labels: dict
    service_account: str
    namespace: str = NAMESPACE


@dataclass
class Service:
    name: str
    namespace: str
    port: int  # the Service port (80)
    port_name: str
    target_port: int  # the container port it resolves to (8000)
    selector: dict
    address: str = ""  # the virtual address (ClusterIP)
    pods: list[Pod] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.{CLUSTER_DOMAIN}"


def kubectl() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "kubectl", Path("/usr/local/bin/kubectl"), Path("/usr/bin/kubectl")):
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("kubectl not found: ./manage_all.sh test installs it into .venv/bin")


def rendered_manifests(overlay: str = "k8s/overlays/local") -> list[dict]:
    """``kubectl kustomize`` of the overlay (what ``kubectl apply -k`` would create)."""
    result = subprocess.run([kubectl(), "kustomize", str(ROOT / overlay)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay}: {result.stderr}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def load_istio(files: tuple[str, ...] = ISTIO_FILES) -> list[dict]:
    objects = []
    for name in files:
        for obj in yaml.safe_load_all((ISTIO_DIR / name).read_text()):
            if not obj:
                continue
            if obj["kind"] not in ISTIO_KINDS:
                raise NotImplementedError(f"{name}: kind {obj['kind']} is not translated")
            objects.append(obj)
    return objects


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def selects(selector: dict | None, labels: dict) -> bool:
    """A workload selector (``matchLabels``) or a Service selector: every pair must be on the pod."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def services_from_manifests(manifests: list[dict]) -> list[Service]:
    deployments = [o for o in manifests if o["kind"] == "Deployment"]
    services = []
    for obj in (o for o in manifests if o["kind"] == "Service"):
        (port,) = obj["spec"]["ports"]
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):  # a named port: resolve it in the selected Deployment's containers
            (deployment,) = [
                d for d in deployments if selects(obj["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
            ]
            (target,) = [
                p["containerPort"]
                for c in deployment["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
                if p.get("name") == target
            ]
        services.append(
            Service(
                name=obj["metadata"]["name"],
                namespace=obj["metadata"].get("namespace", NAMESPACE),
                port=int(port["port"]),
                port_name=port.get("name", ""),
                target_port=int(target),
                selector=obj["spec"]["selector"],
            )
        )
    return services


def deployment_pod_template(manifests: list[dict], app: str) -> dict:
    (deployment,) = [
        o
        for o in manifests
        if o["kind"] == "Deployment" and o["spec"]["template"]["metadata"]["labels"].get("app") == app
    ]
    return deployment["spec"]["template"]
