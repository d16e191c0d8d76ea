"""The images: a Debian base made once, the services from their real Dockerfiles on it, the stack's other
services from Debian's packages, and a compose file that takes every image name from the environment."""

import re
import shutil
import subprocess
import time
import uuid

import containers_support as cs
import pytest
import yaml

li = cs.local_images

# What docker-compose.yml demands from the environment: never a default for a secret.
SECRETS = ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "USER_SVC_DB_PASSWORD", "ORDER_SVC_DB_PASSWORD")
# The upstream pins docker-compose.yml falls back to when no variable is set.
UPSTREAM_DEFAULTS = {
    "USER_SVC_IMAGE": "meshed/user-svc:0.1.0",
    "ORDER_SVC_IMAGE": "meshed/order-svc:0.1.0",
    "POSTGRES_IMAGE": "postgres:17.6-bookworm",
    "NGINX_IMAGE": "nginx:1.28.0-alpine",
    "PROMETHEUS_IMAGE": "prom/prometheus:v2.53.4",
}


def test_every_image_is_built_and_the_services_sit_on_the_local_base(images):
    base_layers = cs.inspect(images["BASE_IMAGE"])["RootFS"]["Layers"]
    for variable, tag in images.items():
        info = cs.inspect(tag)
        assert info["Size"] > 0
        # Each image starts with the base image's filesystem: built FROM it, nothing pulled.
        assert info["RootFS"]["Layers"][: len(base_layers)] == base_layers, f"{variable}={tag} is not on the base"
    for service in ("user_svc", "order_svc"):
        dockerfile = (cs.REPO_ROOT / service / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=python:3.11.14-slim-bookworm" in dockerfile
        assert [line for line in dockerfile.splitlines() if line.startswith("FROM")] == [
            "FROM ${BASE_IMAGE} AS builder",
            "FROM ${BASE_IMAGE} AS runtime",
        ]


def test_the_base_image_carries_the_machine_certificates(images):
    for cert in sorted(li.CA_DIR.glob("*.crt")):
        inside = cs.docker("run", "--rm", images["BASE_IMAGE"], "cat", f"/usr/local/share/ca-certificates/{cert.name}")
        assert inside.stdout == cert.read_text()
    bundle = cs.docker("run", "--rm", images["BASE_IMAGE"], "cat", "/etc/ssl/certs/ca-certificates.crt").stdout
    for cert in sorted(li.CA_DIR.glob("*.crt")):
        body = "".join(cert.read_text().split())
        assert body in "".join(bundle.split()), f"{cert.name} is not in the image's CA bundle"


def test_the_base_image_is_made_again_only_when_an_input_changes(images, tmp_path, monkeypatch):
    started = time.monotonic()
    again = li.build_base_image()
    assert again.cached and again.tag == images["BASE_IMAGE"]
    assert time.monotonic() - started < 10
    # A new certificate on the machine is a new input: a new tag, so it would be built again.
    for cert in li.CA_DIR.glob("*.crt"):
        shutil.copy(cert, tmp_path / cert.name)
    (tmp_path / "another.crt").write_text("-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(li, "CA_DIR", tmp_path)
    assert li.base_inputs_digest() not in images["BASE_IMAGE"]


def test_compose_takes_every_image_name_from_the_environment(images):
    compose = yaml.safe_load(cs.COMPOSE_FILE.read_text())
    seen = {}
    for name, service in compose["services"].items():
        match = re.fullmatch(r"\$\{(\w+_IMAGE):-([^}]+)\}", service["image"])
        assert match, f"{name}: image {service['image']!r} is not ${{VARIABLE:-upstream pin}}"
        seen[match.group(1)] = match.group(2)
    assert seen == UPSTREAM_DEFAULTS
    assert cs.DATABASE_IMAGE_ENV in seen

    def rendered(env):
        result = subprocess.run(
            [shutil.which("docker-compose") or "docker-compose", "-f", str(cs.COMPOSE_FILE), "config"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", **{name: uuid.uuid4().hex for name in SECRETS}, **env},
            cwd=cs.REPO_ROOT,
        )
        assert result.returncode == 0, result.stderr
        return {name: svc["image"] for name, svc in yaml.safe_load(result.stdout)["services"].items()}

    # The one-off migrate services run the apps' images.
    assert set(rendered({}).values()) == set(UPSTREAM_DEFAULTS.values())
    local = rendered({k: v for k, v in images.items() if k in UPSTREAM_DEFAULTS})
    assert set(local.values()) == {images[k] for k in UPSTREAM_DEFAULTS}


@pytest.fixture
def postgres(images):
    """The local PostgreSQL image on a fresh volume, published on a free loopback port."""
    name = f"meshedtest-pg-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    password = uuid.uuid4().hex
    cs.docker("volume", "create", volume)
    try:
        cs.docker(
            "run", "-d", "--name", name, "-p", "127.0.0.1::5432",
            "-e", "POSTGRES_USER=meshed", "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=meshed",
            "-v", f"{volume}:/var/lib/postgresql/data", images["POSTGRES_IMAGE"],
        )  # fmt: skip
        yield name, password
    finally:
        cs.docker("rm", "-f", name, check=False)
        cs.docker("volume", "rm", volume, check=False)


def test_postgres_image_starts_on_its_volume_and_keeps_data_across_a_restart(postgres):
    name, password = postgres
    psql = shutil.which("psql")
    assert psql, "psql not found: postgresql-client is in tools/apt-packages.txt"

    def query(sql):
        port = cs.docker("port", name, "5432").stdout.split(":")[-1].strip()
        result = subprocess.run(
            [psql, f"postgresql://meshed@127.0.0.1:{port}/meshed", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True,
            text=True,
            env={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    cs.wait_healthy(name)
    assert query("select current_user") == "meshed"
    query("create table kept (word text); insert into kept values ('still here')")
    cs.docker("restart", "-t", "20", name)
    cs.wait_healthy(name)
    assert query("select word from kept") == "still here"
    # Runs as postgres, not root, and the cluster lives on the volume.
    assert cs.docker("exec", name, "id", "-un").stdout.strip() == "postgres"
    mounts = {m["Destination"]: m["Type"] for m in cs.inspect(name)["Mounts"]}
    assert mounts == {"/var/lib/postgresql/data": "volume"}
    # A wrong password is refused: the cluster asks for one.
    port = cs.docker("port", name, "5432").stdout.split(":")[-1].strip()
    refused = subprocess.run(
        [psql, f"postgresql://meshed@127.0.0.1:{port}/meshed", "-XAtc", "select 1"],
        capture_output=True,
        text=True,
        env={"PGPASSWORD": "wrong", "PGCONNECT_TIMEOUT": "5"},
        timeout=30,
    )
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr
