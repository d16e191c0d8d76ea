"""Unsafe or malformed settings stop a service at start with a message that says what to fix; the
settings that trust a proxy in front do so only when set."""

import json
import urllib.request

import pytest

from testsupport.services import start_service

REFUSALS = [
    ("user-svc", {"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY must be set"),
    ("user-svc", {"DJANGO_DEBUG": "true", "DEPLOY_ENV": "production"}, "DJANGO_DEBUG=true is refused"),
    ("user-svc", {"DJANGO_DEBUG": "maybe"}, "is not a boolean"),
    ("user-svc", {"REPOSITORY_BACKEND": "redis"}, "use 'memory' or 'postgres'"),
    (
        "user-svc",
        {"REPOSITORY_BACKEND": "postgres", "DATABASE_URL": ""},
        "REPOSITORY_BACKEND=postgres needs DATABASE_URL",
    ),
    ("order-svc", {"REPOSITORY_BACKEND": "postgres", "DATABASE_URL": "host=db user=u"}, "must name a database"),
    ("order-svc", {"REPOSITORY_BACKEND": "postgres", "DATABASE_URL": "db:5432/orders"}, "not a libpq connection"),
    ("user-svc", {"REPOSITORY_BACKEND": "postgres", "DATABASE_STATEMENT_TIMEOUT": "0"}, "must be at least 0.01"),
    ("order-svc", {"USER_SVC_URL": "user-svc:8000"}, "must be an http(s) URL"),
    ("order-svc", {"USER_SVC_ATTEMPTS": "0"}, "USER_SVC_ATTEMPTS='0' must be at least 1"),
    ("order-svc", {"USER_SVC_DEADLINE": "soon"}, "is not a valid float"),
]


@pytest.mark.parametrize(("service", "env", "message"), REFUSALS)
def test_bad_settings_refuse_to_start(tmp_path, service, env, message):
    with pytest.raises(RuntimeError) as error:
        start_service(service, tmp_path, env=env, ready_timeout=20)
    assert message in str(error.value)


def test_debug_is_allowed_locally_without_a_key(tmp_path):
    service = start_service("user-svc", tmp_path, env={"DJANGO_DEBUG": "true", "DJANGO_SECRET_KEY": ""})
    service.stop()


def _next_link(service, **headers):
    """The first page's next link, asked for with ``headers`` (two users make two pages of one)."""
    for number in range(2):
        body = json.dumps({"name": "Ada", "email": f"ada{number}@example.com"}).encode()
        request = urllib.request.Request(f"{service.url}/users", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
    request = urllib.request.Request(f"{service.url}/users?page_size=1", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["next"]


@pytest.mark.parametrize(("trusted", "scheme"), [(None, "http"), ("false", "http"), ("true", "https")])
def test_x_forwarded_proto_is_believed_only_when_the_proxy_in_front_is_trusted(tmp_path, trusted, scheme):
    """Off by default: a client talking to the service directly cannot make its links say https."""
    env = {"DJANGO_ALLOWED_HOSTS": "127.0.0.1,api.example"}
    if trusted is not None:
        env["DJANGO_TRUST_X_FORWARDED_PROTO"] = trusted
    service = start_service("user-svc", tmp_path, env=env)
    try:
        link = _next_link(service, **{"X-Forwarded-Proto": "https", "Host": "api.example:8443"})
    finally:
        service.stop()
    assert link == f"{scheme}://api.example:8443/users?page=2&page_size=1"
