"""docker-compose.yml on this machine, as docs/deploy.md runs it: the images from Debian's packages
(tools/local_images.py), the stack under a project name of its own, and its containers' health.

Here, in bench, so that bench/pod_usage.py needs nothing from the tests; the container suite
(tests/containers/containers_support.py) drives the stack with this same class: one copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

_spec = importlib.util.spec_from_file_location("local_images", REPO_ROOT / "tools" / "local_images.py")
local_images = importlib.util.module_from_spec(_spec)
sys.modules["local_images"] = local_images  # dataclasses look their module up there
_spec.loader.exec_module(local_images)

APP_SERVICES = ("user-svc", "order-svc")
SCALE = {"user-svc": 3, "order-svc": 2}

# The stack's database, named in this one place: the service in docker-compose.yml and the variable its
# image name comes from.
DATABASE_SERVICE = "postgres"
DATABASE_IMAGE_ENV = "POSTGRES_IMAGE"


def docker_cli() -> str:
    cli = local_images.docker_cli()
    if not (os.path.isfile(cli) and os.access(cli, os.X_OK)):
        raise RuntimeError(f"docker client {cli} not found: Debian's docker.io is in tools/apt-packages.txt")
    return cli


def docker(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def build_images(log=lambda line: None) -> dict[str, str]:
    """Every image docker-compose.yml runs, built here: the variables it reads them from
    ({"BASE_IMAGE", "USER_SVC_IMAGE", ..., "POSTGRES_IMAGE"})."""
    base, built = local_images.build_all(log=log)
    return {"BASE_IMAGE": base.tag, **local_images.compose_env(built)}


class Stack:
    """docker-compose.yml brought up as docs/deploy.md says, under a project name of its own, with
    secrets made up per run and its ports published on free loopback ports."""

    def __init__(self, images: dict[str, str]):
        self.project = f"meshedtest{uuid.uuid4().hex[:8]}"
        compose = shutil.which("docker-compose")
        if not compose:
            raise RuntimeError("docker-compose not found: Debian's docker-compose is in tools/apt-packages.txt")
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
            raise RuntimeError(
                f"docker-compose {' '.join(args)} failed: {result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
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
        if host != "127.0.0.1":
            raise RuntimeError(f"{service} is published on {published}, not on loopback only")
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
    """Return once Docker says the container's HEALTHCHECK passes; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        state = inspect(container)["State"]
        status = state.get("Health", {}).get("Status") if state.get("Running") else "not running"
        if status == "healthy":
            return
        time.sleep(0.5)
    raise RuntimeError(f"{container} not healthy within {timeout:.0f} s (last: {status})")
