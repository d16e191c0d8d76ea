"""docker-compose.yml validates against the Compose Specification schema (no Docker engine here:
static checks only) and is scalable: app services have no container_name and no host ports."""

import json
import re

import pytest
import yaml
from deploy_support import COMPOSE_SCHEMA, REPO_ROOT

APP_SERVICES = ("user-svc", "order-svc")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec(compose):
    import jsonschema

    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(f"Compose Specification schema not found at {COMPOSE_SCHEMA}")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # "$schema": "https://json-schema.org/draft-07/schema" (no trailing "#", so jsonschema's
    # lookup by URI misses it): draft 7 explicitly.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(map(str, e.path)))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_validator_can_fail(compose):
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["user-svc"]["replicas_"] = 3
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_scaled_services_have_no_fixed_names_or_host_ports(compose):
    for name in APP_SERVICES:
        svc = compose["services"][name]
        assert "container_name" not in svc, f"{name}: container_name prevents scaling"
        assert "ports" not in svc, f"{name}: host ports prevent scaling; use expose"
        assert svc["deploy"]["replicas"] >= 2
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            # The proxy, and Prometheus' UI, on loopback only: a service port is never published.
            assert name in ("nginx", "prometheus"), f"{name} publishes {port}"
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_secret_key_comes_from_the_environment(compose):
    raw = (REPO_ROOT / "docker-compose.yml").read_text()
    for name in APP_SERVICES:
        value = compose["services"][name]["environment"]["DJANGO_SECRET_KEY"]
        assert re.fullmatch(r"\$\{DJANGO_SECRET_KEY:\?[^}]+\}", value), value
    assert not re.search(
        r"(?i)(secret|password)[\w-]*\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}", raw.replace("${DJANGO_SECRET_KEY", "")
    )


def test_services_wiring(compose):
    services = compose["services"]
    postgres = services["postgres"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    for var in ("POSTGRES_PASSWORD", "USER_SVC_DB_PASSWORD", "ORDER_SVC_DB_PASSWORD"):
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", postgres["environment"][var]), var

    databases = set()
    for name in APP_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert env["REPOSITORY_BACKEND"] == "postgres"
        match = re.fullmatch(r"postgresql://(\w+):\$\{(\w+)\}@postgres:5432/(\w+)", env["DATABASE_URL"])
        assert match, env["DATABASE_URL"]
        role, password_var, database = match.groups()
        assert role == database == name.replace("-", "_") and password_var == f"{role.upper()}_DB_PASSWORD"
        databases.add(database)
        # The app starts only after its own one-off migration succeeded, against the same database.
        migrate = services[f"{name}-migrate"]
        assert svc["depends_on"] == {f"{name}-migrate": {"condition": "service_completed_successfully"}}
        assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert migrate["command"][-3:] == ["manage.py", "migrate", "--noinput"]
        assert migrate["image"] == svc["image"] and migrate["environment"]["DATABASE_URL"] == env["DATABASE_URL"]
        assert migrate["restart"] == "no" and migrate.get("read_only") is True
        assert (REPO_ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["build"]["context"] == "."
        if int(env["GUNICORN_WORKERS"]) > 1:
            tmpfs = {v["target"] for v in svc.get("volumes", []) if isinstance(v, dict) and v["type"] == "tmpfs"}
            tmpfs |= {entry.split(":")[0] for entry in svc.get("tmpfs", [])}
            assert env["PROMETHEUS_MULTIPROC_DIR"] in tmpfs, f"{name}: multiproc dir must be a tmpfs"
            assert env["REPOSITORY_BACKEND"] == "postgres"  # gunicorn_conf refuses workers > 1 over memory
        assert svc.get("read_only") is True
    assert len(databases) == len(APP_SERVICES), "each service gets its own database"
    assert re.fullmatch(r"http://(nginx|user-svc)(:\d+)?", services["order-svc"]["environment"]["USER_SVC_URL"])


def test_init_script_gives_each_service_its_own_database_and_role(compose, postgres_server):
    """deploy/postgres/init-databases.sh, run as the postgres image runs it, against a real server."""
    import os
    import secrets
    import subprocess

    import psycopg

    mounts = [v for v in compose["services"]["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in str(v)]
    script = REPO_ROOT / mounts[0].split(":")[0]
    passwords = {"user_svc": secrets.token_urlsafe(16), "order_svc": secrets.token_urlsafe(16)}
    env = {
        **os.environ,
        "POSTGRES_USER": "postgres",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres_server.port),
        "PGPASSWORD": postgres_server.password,
        "USER_SVC_DB_PASSWORD": passwords["user_svc"],
        "ORDER_SVC_DB_PASSWORD": passwords["order_svc"],
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    def connect(role, database):
        return psycopg.connect(
            host="127.0.0.1", port=postgres_server.port, user=role, password=passwords[role], dbname=database
        )

    for role in passwords:
        with connect(role, role) as conn:
            conn.execute("CREATE TABLE mine (id int)")  # owns its database
        other = next(r for r in passwords if r != role)
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            connect(role, other).close()


def test_nginx_routes_users_and_orders(compose):
    nginx = compose["services"]["nginx"]
    mounts = [v for v in nginx["volumes"] if str(v).endswith(":/etc/nginx/nginx.conf:ro")]
    assert mounts, "nginx.conf is not mounted"
    conf_path = REPO_ROOT / mounts[0].split(":")[0]
    conf = conf_path.read_text()
    # proxy_pass to a variable, so that nginx re-resolves the replicas (see the comment in nginx.conf).
    targets = dict(re.findall(r"set\s+\$(\w+)\s+([\w.-]+:\d+);", conf))
    routes = dict(re.findall(r"location\s+(/\w+)\s*\{\s*proxy_pass\s+http://\$(\w+);", conf))
    assert targets[routes["/users"]] == "user-svc:8000"
    assert targets[routes["/orders"]] == "order-svc:8000"
    assert re.search(r"^\s*resolver\s+127\.0\.0\.11\b", conf, re.M)
    published = [p.split(":")[-1] for p in nginx["ports"]]
    assert all(re.search(rf"listen\s+{port}\b", conf) for port in published)
