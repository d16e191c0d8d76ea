"""DATABASE_URL -> DATABASES: libpq's own parsing (multi-host included), the service's timeouts as
defaults that the URL may override, and no password in an error message."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from svc_common.storage.database import database_settings

DEFAULTS = {
    "connect_timeout": 2,
    "statement_timeout": 1.5,
    "pool_size": 8,
    "pool_timeout": 2.0,
    "application_name": "user-svc",
}


def test_multi_host_url_keeps_libpq_lists_and_parameters():
    entry = database_settings(
        "postgresql://app:p%40ss%2Fw@db-1:5432,db-2:5433/users?target_session_attrs=read-write&sslmode=require",
        **DEFAULTS,
    )
    assert (entry["NAME"], entry["USER"], entry["PASSWORD"]) == ("users", "app", "p@ss/w")
    assert (entry["HOST"], entry["PORT"]) == ("db-1,db-2", "5432,5433")
    options = entry["OPTIONS"]
    assert options["target_session_attrs"] == "read-write" and options["sslmode"] == "require"
    assert options["connect_timeout"] == "2" and options["tcp_user_timeout"] == "3500"
    assert "-c statement_timeout=1500 -c lock_timeout=1500" in options["options"]
    # A bounded pool per process, each connection checked as it is lent.
    assert (entry["ENGINE"], entry["CONN_MAX_AGE"]) == ("svc_common.storage.postgres_backend", 0)
    assert {key: options["pool"][key] for key in ("min_size", "max_size", "timeout", "reconnect_timeout")} == {
        "min_size": 1,
        "max_size": 8,
        "timeout": 2.0,
        "reconnect_timeout": 2.0,
    }


def test_the_url_overrides_the_defaults():
    entry = database_settings(
        "postgresql:///users?host=/run/postgresql&connect_timeout=7&options=-c%20statement_timeout%3D9000",
        **DEFAULTS,
    )
    assert entry["HOST"] == "/run/postgresql" and entry["OPTIONS"]["connect_timeout"] == "7"
    # The later -c wins in PostgreSQL, and the URL's comes last.
    assert entry["OPTIONS"]["options"].endswith("-c statement_timeout=9000")


def test_key_value_form_is_accepted_too():
    entry = database_settings("host=db port=5432 dbname=orders user=o password=secret", **DEFAULTS)
    assert (entry["HOST"], entry["NAME"], entry["PASSWORD"]) == ("db", "orders", "secret")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://app:hunter2@db:5432", "must name a database"),
        ("db:5432/hunter2", "not a libpq connection"),
        ("postgresql://app:hunter2@db/users?no_such_parameter=1", "not a libpq connection"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url, message):
    with pytest.raises(ImproperlyConfigured) as error:
        database_settings(url, **DEFAULTS)
    assert message in str(error.value) and "hunter2" not in str(error.value)


def test_the_readiness_connection_reaches_the_same_server_outside_the_pool():
    """/readyz's own connection (svc_common.storage.readiness): same hosts, role, TLS and keepalives as
    the request connections, no pool, its own application_name, and a statement timeout of its own
    that wins over the requests' (the last -c setting)."""
    from psycopg.conninfo import make_conninfo

    from svc_common.storage.readiness import CHECK_SECONDS, readiness_connect_kwargs

    entry = database_settings(
        "postgresql://app:secret@db-1:5432,db-2:5433/users?target_session_attrs=read-write&sslmode=verify-full",
        **DEFAULTS,
    )
    kwargs = readiness_connect_kwargs(entry)
    assert "pool" not in kwargs
    assert (kwargs["dbname"], kwargs["user"], kwargs["password"]) == ("users", "app", "secret")
    assert (kwargs["host"], kwargs["port"]) == ("db-1,db-2", "5432,5433")
    assert kwargs["sslmode"] == "verify-full" and kwargs["target_session_attrs"] == "read-write"
    assert kwargs["keepalives"] == "1" and kwargs["connect_timeout"] == "2"
    assert kwargs["application_name"] == "user-svc-readiness"
    assert kwargs["options"].endswith(f"-c statement_timeout={round(CHECK_SECONDS * 1000)}")
    assert kwargs["options"].startswith("-c statement_timeout=1500 -c lock_timeout=1500")
    make_conninfo(**kwargs)  # libpq accepts every key
