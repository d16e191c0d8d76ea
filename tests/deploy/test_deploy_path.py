"""The ordered deploy path (the block between the deploy-path markers, the same in README.md and
docs/deploy.md), walked command by command against the rendered manifests.

Each command changes a model of the cluster: what `istioctl install` and the pinned operator
manifests install (their CRDs from schemas/, their namespaces and Deployments), what each
`kubectl apply -f/-k` of this repository creates (rendered with kubectl), each Secret created by
hand and its keys. At every apply it checks what a real cluster would refuse or leave hanging:
a kind whose CRD is not installed yet, a namespace that does not exist, a Secret, ConfigMap,
ServiceAccount or ObjectStore a rendered object names that nothing has made by then (or a key
missing from it), and a pod created in `meshed` before the sidecar injector exists. Mutated copies of
the path (steps swapped or left out) must fail the same walk.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from deploy_support import ISTIO_CRDS, REPO_ROOT, kubectl_path

DOCUMENTS = (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "deploy.md")
BEGIN = re.compile(r"^<!-- deploy-path:begin.*-->$", re.MULTILINE)
END = "<!-- deploy-path:end -->"

CNPG_CRDS = sorted((REPO_ROOT / "schemas" / "cnpg").glob("postgresql.cnpg.io_*.yaml"))
PLUGIN_CRDS = sorted((REPO_ROOT / "schemas" / "cnpg").glob("barmancloud.cnpg.io_*.yaml"))
# API groups Kubernetes serves without any CRD.
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
# Kinds whose operator makes pods: CloudNativePG's instances and its bootstrap Jobs.
OPERATOR_POD_KINDS = {("postgresql.cnpg.io", "Cluster")}


def path_block(document: Path) -> str:
    text = document.read_text()
    begin = BEGIN.search(text)
    assert begin, f"{document.name}: no deploy-path:begin marker"
    end = text.index(END, begin.end())
    # Other markers may stand between the begin marker and the fence (the README's "not run by tests").
    block = re.sub(r"\A(?:\s*<!--.*?-->)*", "", text[begin.end() : end]).strip()
    assert block.startswith("```sh\n") and block.endswith("\n```"), f"{document.name}: the path is one sh block"
    return block[len("```sh\n") : -len("\n```")]


def commands(block: str) -> list[tuple[int, str]]:
    """(step number, command line) with continuations joined and comments dropped."""
    result, step, pending = [], 0, ""
    for line in block.splitlines():
        header = re.match(r"#\s*(\d+)\.", line.strip())
        if header:
            step = int(header.group(1))
            continue
        if not pending and (not line.strip() or line.strip().startswith("#")):
            continue
        code = line.rstrip()
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        result.append((step, (pending + code).strip()))
        pending = ""
    return result


@functools.cache
def crds_of(*files: Path) -> frozenset[tuple[str, str]]:
    kinds = set()
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                kinds.add((doc["spec"]["group"], doc["spec"]["names"]["kind"]))
    return frozenset(kinds)


@dataclass
class Install:
    """What one external install command puts into the cluster."""

    crds: set = field(default_factory=set)
    namespaces: set = field(default_factory=set)
    objects: set = field(default_factory=set)  # (kind, namespace, name)
    needs_crds: set = field(default_factory=set)
    needs_namespaces: set = field(default_factory=set)
    injector: bool = False


def external_install(target: str) -> Install | None:
    """The pinned installers the path may name; None for anything else."""
    if target.startswith("https://github.com/cert-manager/cert-manager/releases/download/v"):
        return Install(
            crds={("cert-manager.io", k) for k in ("Certificate", "CertificateRequest", "Issuer", "ClusterIssuer")}
            | {("acme.cert-manager.io", k) for k in ("Order", "Challenge")},
            namespaces={"cert-manager"},
            objects={("Deployment", "cert-manager", n) for n in ("cert-manager", "cert-manager-webhook")},
        )
    if re.fullmatch(
        r"https://raw\.githubusercontent\.com/cloudnative-pg/cloudnative-pg/release-1\.\d+/releases/cnpg-1\.\d+\.\d+\.yaml",
        target,
    ):
        return Install(
            crds=crds_of(*CNPG_CRDS),
            namespaces={"cnpg-system"},
            objects={("Deployment", "cnpg-system", "cnpg-controller-manager")},
        )
    plugin = r"https://github\.com/cloudnative-pg/plugin-barman-cloud/releases/download/v\d+\.\d+\.\d+/manifest\.yaml"
    if re.fullmatch(plugin, target):
        # Installed next to the operator; its TLS comes from cert-manager (plugin docs, "Installation").
        return Install(
            crds=crds_of(*PLUGIN_CRDS),
            objects={("Deployment", "cnpg-system", "barman-cloud")},
            needs_crds={("cert-manager.io", "Certificate"), ("cert-manager.io", "Issuer")},
            needs_namespaces={"cnpg-system"},
        )
    addon = re.fullmatch(r"\$ISTIO/samples/addons/(\w+)\.yaml", target)
    if addon:
        name = addon.group(1)
        objects = {("Deployment", "istio-system", name)}
        if name == "prometheus":
            objects.add(("ConfigMap", "istio-system", "prometheus"))
        return Install(objects=objects, needs_namespaces={"istio-system"})
    return None


@dataclass
class Cluster:
    """The model of the cluster the path builds, and what went wrong on the way."""

    crds: set = field(default_factory=set)
    namespaces: dict = field(default_factory=dict)  # name -> labels
    objects: dict = field(default_factory=dict)  # (kind, namespace, name) -> object or None
    secrets: dict = field(default_factory=dict)  # (namespace, name) -> {"keys": set, "labels": dict}
    injector: bool = False
    files_written: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    pods_created: list = field(default_factory=list)  # (step, kind, name)

    def fail(self, step: int, message: str) -> None:
        self.problems.append(f"step {step}: {message}")


def pod_spec_refs(spec: dict) -> list[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret, ConfigMap and ServiceAccount a pod spec names."""
    refs: list[tuple[str, str, str | None]] = []
    if spec.get("serviceAccountName"):
        refs.append(("ServiceAccount", spec["serviceAccountName"], None))
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                refs.append(("ConfigMap", source["configMapRef"]["name"], None))
            if "secretRef" in source:
                refs.append(("Secret", source["secretRef"]["name"], None))
        for item in container.get("env", []):
            value_from = item.get("valueFrom", {})
            if "secretKeyRef" in value_from:
                refs.append(("Secret", value_from["secretKeyRef"]["name"], value_from["secretKeyRef"]["key"]))
            if "configMapKeyRef" in value_from:
                refs.append(("ConfigMap", value_from["configMapKeyRef"]["name"], value_from["configMapKeyRef"]["key"]))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items") or [{"key": None}]
            refs += [("Secret", volume["secret"]["secretName"], item["key"]) for item in items]
        if "configMap" in volume:
            refs.append(("ConfigMap", volume["configMap"]["name"], None))
    return refs


def references(obj: dict) -> list[tuple[str, str, str | None]]:
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in POD_KINDS and "template" in spec:
        return pod_spec_refs(spec["template"]["spec"])
    if kind == "Cluster":
        refs = [("Secret", r["passwordSecret"]["name"], "password") for r in spec.get("managed", {}).get("roles", [])]
        refs += [
            ("ObjectStore", p["parameters"]["barmanObjectName"], None)
            for p in spec.get("plugins", [])
            if "barmanObjectName" in p.get("parameters", {})
        ]
        return refs
    if kind == "ObjectStore":
        credentials = spec["configuration"].get("s3Credentials", {})
        return [("Secret", ref["name"], ref["key"]) for ref in credentials.values() if isinstance(ref, dict)]
    if kind == "ScheduledBackup":
        return [("Cluster", spec["cluster"]["name"], None)]
    if kind == "HorizontalPodAutoscaler":
        return [(spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"], None)]
    return []


def operator_secrets(cluster: dict) -> dict[str, set]:
    """Secrets CloudNativePG makes for a Cluster (docs: "Connecting from an application", "Certificates")."""
    name = cluster["metadata"]["name"]
    return {
        f"{name}-app": {"username", "password", "uri", "host", "port", "dbname", "pgpass", "jdbc-uri"},
        f"{name}-ca": {"ca.crt", "ca.key"},
        f"{name}-server": {"tls.crt", "tls.key"},
        f"{name}-replication": {"tls.crt", "tls.key"},
    }


def apply_objects(state: Cluster, step: int, objects: list[dict], source: str) -> None:
    batch = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}
    # kubectl applies Namespaces first; the operator makes its Secrets once it sees the Cluster.
    made_here: dict[tuple[str, str], set] = {}
    for obj in objects:
        if obj["kind"] == "Namespace":
            state.namespaces[obj["metadata"]["name"]] = obj["metadata"].get("labels", {})
        if obj["kind"] == "Secret":
            made_here[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = set(obj.get("data", {}))
        if obj["kind"] == "Cluster":
            for name, keys in operator_secrets(obj).items():
                made_here[(obj["metadata"]["namespace"], name)] = keys
    for (kind, namespace, name), obj in batch.items():
        where = f"{source}: {kind}/{name}"
        group = obj["apiVersion"].rpartition("/")[0] if "/" in obj["apiVersion"] else ""
        if group not in BUILTIN_GROUPS and (group, kind) not in state.crds:
            state.fail(step, f"{where}: no CRD for {group}/{kind} installed yet")
        if kind != "Namespace" and namespace and namespace not in state.namespaces:
            state.fail(step, f"{where}: namespace {namespace} does not exist yet")
        for ref_kind, ref_name, key in references(obj):
            if ref_kind == "Secret":
                keys = state.secrets.get((namespace, ref_name), {}).get("keys")
                if keys is None:
                    keys = made_here.get((namespace, ref_name))
                if keys is None:
                    state.fail(step, f"{where} names Secret {ref_name}, which nothing has made by then")
                elif key is not None and key not in keys:
                    state.fail(step, f"{where} needs key {key} of Secret {ref_name}, which has {sorted(keys)}")
            elif (ref_kind, namespace, ref_name) not in state.objects and (ref_kind, namespace, ref_name) not in batch:
                state.fail(step, f"{where} names {ref_kind} {ref_name}, which nothing has made by then")
        makes_pods = kind in POD_KINDS or (group, kind) in OPERATOR_POD_KINDS
        if makes_pods and namespace == "meshed":
            state.pods_created.append((step, kind, name))
            injection = state.namespaces.get(namespace, {}).get("istio-injection") == "enabled"
            if not (state.injector and injection):
                state.fail(step, f"{where} creates pods before the sidecar injector would inject them")
        if kind == "Cluster":
            for role in obj["spec"].get("managed", {}).get("roles", []):
                secret = state.secrets.get((namespace, role["passwordSecret"]["name"]), {})
                if "cnpg.io/reload" not in secret.get("labels", {}):
                    state.fail(step, f"{where}: role Secret {role['passwordSecret']['name']} lacks cnpg.io/reload")
    for (namespace, name), keys in made_here.items():
        state.secrets.setdefault((namespace, name), {"keys": keys, "labels": {}})
    state.objects.update(batch)


def render(target: str) -> list[dict]:
    return copy.deepcopy(_render(target))


@functools.cache
def _render(target: str) -> list[dict]:
    path = REPO_ROOT / target
    if path.is_dir():
        text = subprocess.run(
            [kubectl_path(), "kustomize", str(path)], capture_output=True, text=True, check=True
        ).stdout
    else:
        text = path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def walk(block: str) -> Cluster:
    state = Cluster()
    state.namespaces.update({"default": {}, "kube-system": {}})
    for step, line in commands(block):
        background = line.endswith("&")
        argv = shlex.split(line.rstrip("&").strip(), comments=True)
        tool = argv[0]
        if (tool == "docker" and argv[1] == "build") or tool == "sleep":
            continue
        if tool == "istioctl" and argv[1] == "install":
            state.crds |= crds_of(ISTIO_CRDS)
            state.namespaces.setdefault("istio-system", {})
            state.objects[("Deployment", "istio-system", "istiod")] = None
            state.objects[("Service", "istio-system", "istio-ingressgateway")] = None
            state.injector = True
            continue
        if tool == "istioctl" and argv[1] == "analyze":
            state.checks.append("istioctl analyze")
            continue
        if tool == "cmctl":
            if ("cert-manager.io", "Certificate") not in state.crds:
                state.fail(step, "cmctl check api before cert-manager is installed")
            continue
        if tool == "printf" and ">" in argv:
            target = argv[argv.index(">") + 1]
            state.files_written.append(target)
            continue
        if tool == "curl":
            if not any(c.startswith("port-forward svc/istio-ingressgateway") for c in state.checks):
                state.fail(step, "curl without a way to the ingress gateway")
            state.checks.append("request " + " ".join(a for a in argv if a.startswith("http")))
            continue
        if tool != "kubectl":
            state.fail(step, f"the walk does not know the command {tool!r}")
            continue
        namespace = option(argv, "-n") or "default"
        verb = next(a for a in argv[1:] if not a.startswith("-") and a != namespace)
        if verb == "apply":
            files = [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
            kustomizations = [argv[i + 1] for i, a in enumerate(argv) if a == "-k"]
            for target in files:
                install = external_install(target)
                if install is not None:
                    for needed in install.needs_crds - state.crds:
                        state.fail(step, f"{target} needs the CRD {needed}, not installed yet")
                    for needed in install.needs_namespaces - set(state.namespaces):
                        state.fail(step, f"{target} installs into namespace {needed}, which does not exist yet")
                    state.crds |= install.crds
                    for created in install.namespaces:
                        state.namespaces.setdefault(created, {})
                    state.objects.update(dict.fromkeys(install.objects))
                    continue
                if target.startswith(("http", "$")) or not (REPO_ROOT / target).is_file():
                    state.fail(step, f"the walk does not know what {target} installs")
                    continue
                apply_objects(state, step, render(target), target)
            for target in kustomizations:
                if target.startswith("k8s/overlays/production") and not state.files_written:
                    state.fail(step, f"{target} applied before this installation's backup-location.env is written")
                apply_objects(state, step, render(target.rstrip("/")), target)
            continue
        if verb == "create" and argv[argv.index("create") + 1] == "secret":
            name = argv[argv.index("create") + 3]
            if namespace not in state.namespaces:
                state.fail(step, f"Secret {name} in namespace {namespace}, which does not exist yet")
            keys = {a.split("=", 1)[1].split("=", 1)[0] for a in argv if a.startswith("--from-literal=")}
            state.secrets[(namespace, name)] = {"keys": keys, "labels": {}, "type": option(argv, "--type")}
            continue
        if verb == "label":
            kind, name = argv[argv.index("label") + 1 : argv.index("label") + 3]
            secret = state.secrets.get((namespace, name))
            if kind != "secret" or secret is None:
                state.fail(step, f"label on {kind} {name}, which does not exist yet")
            else:
                for pair in argv[argv.index("label") + 3 :]:
                    key, _, value = pair.partition("=")
                    secret["labels"][key] = value
            continue
        if verb == "patch":
            kind, name = argv[argv.index("patch") + 1 : argv.index("patch") + 3]
            if (kind.capitalize(), namespace, name) not in state.objects:
                state.fail(step, f"patch of {kind}/{name} before it exists")
            patch = yaml.safe_load((REPO_ROOT / option(argv, "--patch-file")).read_text())
            for ref_kind, ref_name, _ in pod_spec_refs(patch["spec"]["template"]["spec"]):
                if (ref_kind, namespace, ref_name) not in state.objects:
                    state.fail(step, f"patch of {kind}/{name} mounts {ref_kind} {ref_name}, not applied yet")
            continue
        if verb in ("wait", "rollout", "port-forward"):
            resource = next(a for a in argv[argv.index(verb) + 1 :] if "/" in a or a == "deployment")
            if "/" in resource:
                kind, name = resource.split("/")
                known = {k.lower(): k for k, _, _ in state.objects}
                aliases = {"deploy": "deployment", "svc": "service"}
                kind = known.get(aliases.get(kind, kind), kind)
                if (kind, namespace, name) not in state.objects:
                    state.fail(step, f"{verb} on {resource}, which nothing has made")
            condition = option(argv, "--for")
            state.checks.append(f"{verb} {resource}" + (f" {condition}" if condition else ""))
            if verb == "port-forward" and not background:
                state.fail(step, "port-forward in the foreground blocks the path")
            continue
        if verb == "get":
            continue
        state.fail(step, f"the walk does not know `kubectl {verb}`")
    return state


@pytest.fixture(scope="module")
def block() -> str:
    return path_block(DOCUMENTS[0])


def test_readme_and_deploy_doc_show_the_same_path():
    readme, docs = (path_block(document) for document in DOCUMENTS)
    assert readme == docs, "README.md and docs/deploy.md must carry the same deploy path"


def test_the_path_brings_production_up_in_order(block):
    state = walk(block)
    assert not state.problems, "\n".join(state.problems)
    # What it installs and applies, all of it: production with PostgreSQL, the mesh policy, the rules.
    kinds = {kind for kind, _, _ in state.objects}
    assert {"Cluster", "ObjectStore", "ScheduledBackup", "Deployment", "AuthorizationPolicy"} <= kinds
    assert ("ConfigMap", "istio-system", "prometheus") in state.objects
    assert state.pods_created and state.injector
    # The archive path is written for this installation before the overlay is applied.
    assert state.files_written == ["k8s/overlays/production/postgres/backup-location.env"]
    # The checks that say it worked.
    assert "wait cluster/meshed-pg condition=Ready" in state.checks
    assert "wait cluster/meshed-pg condition=ContinuousArchiving" in state.checks
    assert "wait deployment condition=Available" in state.checks
    assert any(check.startswith("request http://127.0.0.1:8080/") for check in state.checks)


def test_the_backup_location_step_writes_what_the_overlay_reads(block, tmp_path):
    """The printf of step 5, run for real with a made-up UID and bucket: the file it writes has the
    key the kustomization reads, a path under the bucket, and differs at another time."""
    (line,) = [line for _, line in commands(block) if line.startswith("printf")]
    target = tmp_path / "backup-location.env"
    script = line.replace("k8s/overlays/production/postgres/backup-location.env", str(target))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "kubectl").write_text("#!/bin/sh\necho 7f1c2a4e-0b6a-4c55-9d1e-3a2b1c0d9e8f\n")
    (fake_bin / "kubectl").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "BACKUP_BUCKET": "s3://my-backups"}
    subprocess.run(["sh", "-c", script], env=env, check=True)
    key, _, value = target.read_text().strip().partition("=")
    assert key == "destinationPath"
    assert re.fullmatch(r"s3://my-backups/meshed-pg/7f1c2a4e-0b6a-4c55-9d1e-3a2b1c0d9e8f-\d{8}T\d{6}Z", value), value
    kustomization = yaml.safe_load((REPO_ROOT / "k8s/overlays/production/postgres/kustomization.yaml").read_text())
    (replacement,) = kustomization["replacements"]
    assert replacement["source"]["fieldPath"] == f"data.{key}"


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        ("overlay before the operator", "no CRD for postgresql.cnpg.io/Cluster"),
        ("no order-svc Secret", "names Secret meshed-pg-order-svc, which nothing has made"),
        ("services before Istio", "creates pods before the sidecar injector"),
        ("no reload label", "lacks cnpg.io/reload"),
        ("plugin before cert-manager", "needs the CRD ('cert-manager.io', 'Certificate')"),
        ("no backup location", "before this installation's backup-location.env is written"),
    ],
)
def test_the_walk_fails_a_path_out_of_order(block, mutation, expected):
    lines = block.splitlines()

    def index_of(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    def move_before(prefix: str, anchor: str) -> None:
        line = lines.pop(index_of(prefix))
        lines.insert(index_of(anchor), line)

    if mutation == "overlay before the operator":
        move_before("kubectl apply -k k8s/overlays/production", "# 3.")
    elif mutation == "no order-svc Secret":
        start = index_of("kubectl -n meshed create secret generic meshed-pg-order-svc")
        del lines[start : start + 3]
        del lines[index_of("kubectl -n meshed label secret meshed-pg-order-svc")]
    elif mutation == "services before Istio":
        istio = lines.pop(index_of("istioctl install"))
        lines.insert(index_of("kubectl apply -k k8s/overlays/production") + 1, istio)
    elif mutation == "no reload label":
        del lines[index_of("kubectl -n meshed label secret meshed-pg-order-svc")]
    elif mutation == "no backup location":
        start = index_of("printf 'destinationPath=")
        del lines[start : start + 3]
    elif mutation == "plugin before cert-manager":
        move_before("kubectl apply -f https://github.com/cloudnative-pg/plugin-barman-cloud", "# 3.")
    state = walk("\n".join(lines))
    assert any(expected in problem for problem in state.problems), state.problems
