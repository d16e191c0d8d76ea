"""Helpers for the container suite: the Docker daemon, the images, the Compose stack and a bounded load.

Every request from the host goes to a port published on 127.0.0.1; containers reach each other by name
inside their own network. A missing tool (dockerd, docker, docker-compose, mmdebstrap) FAILS a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

_spec = importlib.util.spec_from_file_location("local_images", REPO_ROOT / "tools" / "local_images.py")
local_images = importlib.util.module_from_spec(_spec)
sys.modules["local_images"] = local_images  # dataclasses look their module up there
_spec.loader.exec_module(local_images)

APP_SERVICES = ("user-svc", "order-svc")
SCALE = {"user-svc": 3, "order-svc": 2}

# The stack's database, named in this one place: the service in docker-compose.yml, the variable its
# image name comes from, and the host name the production overlay gives it.
DATABASE_SERVICE = "postgres"
DATABASE_IMAGE_ENV = "POSTGRES_IMAGE"


def database_host_in(config: dict[str, str]) -> tuple[str, int]:
    """The host and port the services' rendered configuration points at for their database."""
    from urllib.parse import urlsplit

    url = urlsplit(config["DATABASE_URL"])
    return url.hostname, url.port or 5432


def docker_cli() -> str:
    cli = local_images.docker_cli()
    if not (os.path.isfile(cli) and os.access(cli, os.X_OK)):
        pytest.fail(f"docker client {cli} not found: Debian's docker.io is in tools/apt-packages.txt")
    return cli


def docker(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


# --------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------


def daemon_answers() -> bool:
    result = subprocess.run(
        [docker_cli(), "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True, timeout=20
    )
    return result.returncode == 0


class Daemon:
    """dockerd started by this session when nothing answered on the socket (there is no systemd), and
    stopped at its end; a daemon that was already running is used and left alone."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def ensure(self) -> None:
        if daemon_answers():
            return
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            pytest.fail("dockerd not found: Debian's docker.io is in tools/apt-packages.txt")
        if os.geteuid() != 0:
            pytest.fail("nothing answers on the Docker socket and dockerd needs root to start")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"dockerd exited ({self.process.returncode}): {self.log_path.read_text()[-2000:]}")
            if daemon_answers():
                return
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"dockerd did not answer within 60 s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------


class Stack:
    """docker-compose.yml brought up as docs/deploy.md says, under a project name of its own."""

    def __init__(self, images: dict[str, str]):
        self.project = f"meshedtest{uuid.uuid4().hex[:8]}"
        compose = shutil.which("docker-compose")
        if not compose:
            pytest.fail("docker-compose not found: Debian's docker-compose is in tools/apt-packages.txt")
        self.compose = compose
        self.env = {
            **os.environ,
            **images,
            "DJANGO_SECRET_KEY": f"containers-suite-{uuid.uuid4().hex}{uuid.uuid4().hex}",
            # The database superuser's and each service's password, made up per run (URL-safe).
            "POSTGRES_PASSWORD": uuid.uuid4().hex,
            "USER_SVC_DB_PASSWORD": uuid.uuid4().hex,
            "ORDER_SVC_DB_PASSWORD": uuid.uuid4().hex,
            # Empty: Docker picks a free loopback port; read back with `docker-compose port`.
            "HTTP_PORT": "",
            "PROMETHEUS_PORT": "",
            "COMPOSE_PROJECT_NAME": self.project,
            "DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        }
        self.url = ""
        self.prometheus_url = ""

    def run(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO_ROOT,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} failed: {result.stdout[-2000:]}{result.stderr[-3000:]}")
        return result

    def up(self) -> None:
        scale = [f"--scale={name}={count}" for name, count in SCALE.items()]
        self.run("up", "-d", "--no-build", *scale)
        self.url = f"http://{self.port('nginx', 8080)}"
        self.prometheus_url = f"http://{self.port('prometheus', 9090)}"

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)

    def port(self, service: str, container_port: int) -> str:
        published = self.run("port", service, str(container_port)).stdout.strip()
        host, _, _ = published.rpartition(":")
        assert host == "127.0.0.1", f"{service} is published on {published}, not on loopback only"
        return published

    def containers(self, service: str) -> list[str]:
        """Container names of a service's replicas, numbered as compose numbers them."""
        result = docker(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            '{{.Names}} {{.Label "com.docker.compose.container-number"}}',
        )
        rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
        return [name for name, _ in sorted(rows, key=lambda row: int(row[1]))]

    def logs(self, container: str) -> str:
        result = docker("logs", container)
        return result.stdout + result.stderr


def wait_healthy(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        state = inspect(container)["State"]
        status = state.get("Health", {}).get("Status") if state.get("Running") else "not running"
        if status == "healthy":
            return
        time.sleep(0.5)
    pytest.fail(f"{container} not healthy within {timeout:.0f} s (last: {status})")


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    method: str
    path: str
    status: int | None  # None: no HTTP answer at all
    seconds: float
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def failed(self, ok=(200, 201)) -> list[Outcome]:
        return [o for o in self.outcomes if o.status not in ok]

    def answers(self) -> Counter:
        return Counter(f"{o.method} {o.status if o.status is not None else o.error}" for o in self.outcomes)

    def seconds(self, quantile: float) -> float:
        ordered = sorted(o.seconds for o in self.outcomes)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] if ordered else 0.0

    def summary(self, ok=(200, 201)) -> str:
        return (
            f"{self.sent} sent, {len(self.failed(ok))} failed, answers {dict(sorted(self.answers().items()))}, "
            f"p50 {self.seconds(0.5):.3f} s, p99 {self.seconds(0.99):.3f} s, slowest {self.seconds(1.0):.2f} s"
        )


def request(base: str, method: str, path: str, body: dict | None = None, timeout: float = 15) -> Outcome:
    host = base.removeprefix("http://")
    started = time.monotonic()
    connection = HTTPConnection(host, timeout=timeout)
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        try:
            response.read()
        except (OSError, HTTPException):
            # The status line and headers arrived, the body did not: a response cut short.
            return Outcome(method, path, None, time.monotonic() - started, f"cut after {response.status}")
        return Outcome(method, path, response.status, time.monotonic() - started)
    except (OSError, HTTPException) as exc:
        return Outcome(method, path, None, time.monotonic() - started, type(exc).__name__)
    finally:
        connection.close()


def json_request(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    host = base.removeprefix("http://")
    connection = HTTPConnection(host, timeout=15)
    try:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        connection.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def run_load(make_request, *, workers: int, seconds: float, max_requests: int, during=None) -> LoadResult:
    """`workers` threads call make_request(worker, n) -> Outcome until `seconds` pass or `max_requests`
    are sent; `during(elapsed)` runs alongside once (the fault), and its end is waited for too."""
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def worker(index: int) -> None:
        while time.monotonic() < stop_at:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            outcome = make_request(index, n)
            with lock:
                result.outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=workers + 1) as pool:
        futures = [pool.submit(worker, i) for i in range(workers)]
        fault = pool.submit(during) if during else None
        for future in futures:
            future.result()
        if fault:
            fault.result()
    return result


def new_user_body(tag: str) -> dict:
    suffix = uuid.uuid4().hex[:12]
    return {"name": f"{tag} {suffix}", "email": f"{tag}-{suffix}@example.com"}


def order_body(user_id: int) -> dict:
    return {"user_id": user_id, "items": [{"sku": "SKU-1", "quantity": random.randint(1, 5), "unit_price": "2.50"}]}
