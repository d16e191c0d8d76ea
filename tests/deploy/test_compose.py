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
    redis = services["redis"]
    argv = redis["command"]
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])

    dbs = set()
    for name in APP_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert env["REPOSITORY_BACKEND"] == "redis"
        match = re.fullmatch(r"redis://redis:6379/(\d+)", env["REDIS_URL"])
        assert match, env["REDIS_URL"]
        dbs.add(match.group(1))
        assert (REPO_ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["build"]["context"] == "."
        if int(env["GUNICORN_WORKERS"]) > 1:
            tmpfs = {v["target"] for v in svc.get("volumes", []) if isinstance(v, dict) and v["type"] == "tmpfs"}
            tmpfs |= {entry.split(":")[0] for entry in svc.get("tmpfs", [])}
            assert env["PROMETHEUS_MULTIPROC_DIR"] in tmpfs, f"{name}: multiproc dir must be a tmpfs"
        assert svc.get("read_only") is True
        if int(env["GUNICORN_WORKERS"]) > 1:
            assert env["REPOSITORY_BACKEND"] == "redis"  # gunicorn_conf refuses workers > 1 over memory
    assert len(dbs) == len(APP_SERVICES), "each service gets its own Redis database"
    assert re.fullmatch(r"http://(nginx|user-svc)(:\d+)?", services["order-svc"]["environment"]["USER_SVC_URL"])


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
