"""Every Deployment of the production overlay, its containers run as a container runtime would run the
pod: the same user, read-only root, emptyDir volumes as tmpfs, environment from the ConfigMaps and a
test Secret, command, ports and limits. Its probes must answer where they are declared, and its preStop
command must exist and do what it claims (keep the pod serving while it runs)."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import containers_support as cs
import pytest
import yaml

sys.path.insert(0, str(cs.REPO_ROOT / "tests" / "deploy"))
from deploy_support import kubectl_path

OVERLAY = "k8s/overlays/production"
# The Secrets the pods read: made by hand (meshed-secrets, meshed-pg-order-svc) or by the CloudNativePG
# operator (meshed-pg-app for the cluster's owner, meshed-pg-ca), here with values made up per run.
TEST_SECRET = {
    "meshed-secrets": {"DJANGO_SECRET_KEY": f"k8s-pod-test-{uuid.uuid4().hex}{uuid.uuid4().hex}"},
    "meshed-pg-app": {"username": "user_svc", "password": uuid.uuid4().hex},
    "meshed-pg-order-svc": {"username": "order_svc", "password": uuid.uuid4().hex},
}


DEPLOYMENTS = ("order-svc", "user-svc")


@pytest.fixture(scope="module")
def overlay():
    """(Deployments, ConfigMaps' data) by name, from `kubectl kustomize` of the production overlay."""
    result = subprocess.run(
        [kubectl_path(), "kustomize", str(cs.REPO_ROOT / OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    return deployments, configmaps


def quantity_bytes(text):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(text))
    return int(match.group(1)) * units.get(match.group(2), 1)


def quantity_cpus(text):
    text = str(text)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def environment(container, configmaps):
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(TEST_SECRET[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            # $(NAME) refers to a variable defined earlier in the container, as the kubelet expands it.
            env[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = TEST_SECRET[ref["name"]][ref["key"]]
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


def run_args(pod, container, configmaps, images, network, secret_dirs):
    """`docker run` arguments for one container of a pod spec."""
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    assert uid is not None and uid != 0 and (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot"))
    args = ["--network", network, "--user", f"{uid}:{gid}"]
    if "fsGroup" in pod_sc:
        args += ["--group-add", str(pod_sc["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in sc.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges:true"]
    assert not sc.get("privileged")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            # The Secret's chosen keys as files (mode 0644, the kubelet's default), read-only.
            assert mount.get("readOnly"), mount
            args += ["-v", f"{secret_dirs[volume['secret']['secretName']]}:{mount['mountPath']}:ro"]
            continue
        assert "emptyDir" in volume, f"volume {mount['name']}: only emptyDir and secret are run here"
        size = quantity_bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
        # An emptyDir is a fresh, writable directory for the pod (0777), on tmpfs when medium: Memory.
        args += ["--tmpfs", f"{mount['mountPath']}:size={size},mode=1777"]
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        args += ["--cpus", str(quantity_cpus(limits["cpu"]))]
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    for port in container.get("ports", []):
        args += ["-p", f"127.0.0.1::{port['containerPort']}"]
    for key, value in environment(container, configmaps).items():
        args += ["-e", f"{key}={value}"]
    command = container.get("command")
    if command:
        args += ["--entrypoint", command[0]]
    name = container["image"].split("/")[-1].split(":")[0]
    image = images[f"{name.upper().replace('-', '_')}_IMAGE"]
    return [*args, image, *(command[1:] if command else []), *container.get("args", [])]


def probe_port(container, probe):
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return port


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def poll_until(url, seen, done):
    while not done.is_set():
        seen.append(http_status(url))
        time.sleep(0.25)


def tls_for(directory, host):
    """A CA, and a server certificate for ``host`` signed by it (what CloudNativePG makes for its
    services): {"ca.crt", "server.crt", "server.key"} -> path. libpq's verify-full checks both."""
    directory.mkdir(mode=0o755)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=meshed-pg test CA")  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}"
    )
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{host}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return {name: directory / name for name in ("ca.crt", "server.crt", "server.key")}


@pytest.fixture
def pod_network(images, tmp_path):
    """A network for the pod, with the database it is configured for answering at its rendered name:
    PostgreSQL with TLS for that name, and the services' roles with the test Secrets' passwords."""
    network = f"meshedtest-pod-{uuid.uuid4().hex[:8]}"
    cs.docker("network", "create", network)
    started = []
    secret_dirs = {}
    try:

        def database_for(env):
            host, _ = cs.database_host_in(env)
            name = f"{network}-db"
            if name in started:
                return
            image = images[cs.DATABASE_IMAGE_ENV]
            tls = tls_for(tmp_path / "tls", host)
            owner = cs.docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
            group = cs.docker("run", "--rm", "--entrypoint", "id", image, "-g").stdout.strip()
            for path in tls.values():
                os.chown(path, int(owner), int(group))
                path.chmod(0o600 if path.suffix == ".key" else 0o644)
            ca_only = tmp_path / "meshed-pg-ca"
            ca_only.mkdir(mode=0o755)
            shutil.copy(tls["ca.crt"], ca_only / "ca.crt")
            (ca_only / "ca.crt").chmod(0o644)
            secret_dirs["meshed-pg-ca"] = ca_only
            init_script = cs.REPO_ROOT / "deploy" / "postgres" / "init-databases.sh"
            cs.docker(
                "run", "-d", "--name", name, "--network", network, "--network-alias", host,
                "-e", f"POSTGRES_PASSWORD={uuid.uuid4().hex}",
                "-e", f"USER_SVC_DB_PASSWORD={TEST_SECRET['meshed-pg-app']['password']}",
                "-e", f"ORDER_SVC_DB_PASSWORD={TEST_SECRET['meshed-pg-order-svc']['password']}",
                "-v", f"{init_script}:/docker-entrypoint-initdb.d/init-databases.sh:ro",
                "-v", f"{tls['server.crt'].parent}:/tls:ro",
                image, "postgres", "-c", "ssl=on", "-c", "ssl_cert_file=/tls/server.crt",
                "-c", "ssl_key_file=/tls/server.key",
            )  # fmt: skip
            started.append(name)
            cs.wait_healthy(name)

        yield network, database_for, started, secret_dirs
    finally:
        for name in started:
            cs.docker("rm", "-f", name, check=False)
        cs.docker("network", "rm", network, check=False)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_deployment_runs_as_its_pod_spec_says(deployment, overlay, images, pod_network, figures):
    network, database_for, started, secret_dirs = pod_network
    deployments, configmaps = overlay
    pod = deployments[deployment]["spec"]["template"]["spec"]
    # Init containers first, one after the other, each to a successful exit (migrate: the schema, over
    # TLS verified against the CA, as the database's role from its Secret).
    for container in pod.get("initContainers", []):
        database_for(environment(container, configmaps))
        name = f"{network}-init-{container['name']}"
        started.append(name)
        init = cs.docker("run", "--name", name, *run_args(pod, container, configmaps, images, network, secret_dirs),
                         check=False, timeout=180)  # fmt: skip
        assert init.returncode == 0, f"init container {container['name']}: {init.stdout[-2000:]}{init.stderr[-2000:]}"
        figures(f"k8s {deployment}/init {container['name']}: exit 0")
    for container in pod["containers"]:
        database_for(environment(container, configmaps))
        name = f"{network}-{container['name']}"
        cs.docker("run", "-d", "--name", name, *run_args(pod, container, configmaps, images, network, secret_dirs))
        started.append(name)

        def published(port, name=name):
            return cs.docker("port", name, str(port)).stdout.split()[0]

        # The probes, in the kubelet's order: startup, then liveness and readiness, within their budgets.
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if not probe:
                continue
            url = f"http://{published(probe_port(container, probe))}{probe['httpGet']['path']}"
            budget = probe.get("initialDelaySeconds", 0) + probe.get("failureThreshold", 3) * probe.get(
                "periodSeconds", 10
            )
            deadline = time.monotonic() + budget
            status = None
            while time.monotonic() < deadline:
                status = http_status(url)
                if status == 200:
                    break
                time.sleep(1)
            assert status == 200, f"{deployment}/{container['name']} {kind} {url}: {status} within {budget} s"

        info = cs.inspect(name)
        assert info["Config"]["User"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
        assert cs.docker("exec", name, "id", "-u").stdout.strip() == str(container["securityContext"]["runAsUser"])
        assert cs.docker("exec", name, "touch", "/app/written", check=False).returncode != 0
        for mount in container.get("volumeMounts", []):
            probe_file = f"{mount['mountPath']}/written-{uuid.uuid4().hex[:6]}"
            written = cs.docker("exec", name, "touch", probe_file, check=False).returncode == 0
            assert written != bool(mount.get("readOnly")), mount  # emptyDirs writable, the CA read-only
        inside = cs.docker("exec", name, "env").stdout
        assert f"DJANGO_SECRET_KEY={TEST_SECRET['meshed-secrets']['DJANGO_SECRET_KEY']}" in inside

        # preStop: the command exists in the image, takes the time it claims, and the pod keeps serving
        # (readiness answers 200) all along; then SIGTERM ends it within the grace period.
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        readiness = container["readinessProbe"]
        ready_url = f"http://{published(probe_port(container, readiness))}{readiness['httpGet']['path']}"
        seen = []
        done = threading.Event()
        poller = threading.Thread(target=poll_until, args=(ready_url, seen, done))
        poller.start()
        started_at = time.monotonic()
        hook = cs.docker("exec", name, *pre_stop, check=False, timeout=60)
        took = time.monotonic() - started_at
        done.set()
        poller.join()
        assert hook.returncode == 0, hook.stderr
        if pre_stop[0] == "sleep":
            assert float(pre_stop[1]) <= took < float(pre_stop[1]) + 3, took
        assert seen and set(seen) == {200}, seen
        grace = pod.get("terminationGracePeriodSeconds", 30)
        stop_started = time.monotonic()
        cs.docker("stop", "-t", str(grace), name)
        stopped_in = time.monotonic() - stop_started
        exit_code = cs.inspect(name)["State"]["ExitCode"]
        assert exit_code == 0 and stopped_in < grace, (exit_code, stopped_in)
        figures(
            f"k8s {deployment}/{container['name']}: probes 200, preStop {' '.join(pre_stop)} took {took:.1f} s "
            f"with readiness {len(seen)}x 200, SIGTERM exit {exit_code} in {stopped_in:.1f} s"
        )


def test_every_deployment_of_the_overlay_is_run(overlay):
    deployments, _ = overlay
    assert set(deployments) == set(DEPLOYMENTS)
