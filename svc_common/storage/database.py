"""``DATABASES["default"]`` from one ``DATABASE_URL``, parsed by libpq's own rules.

dj-database-url splits the URL with ``urllib.parse``, which cannot read libpq's multi-host form
(``postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write``: the port "5432,h2:5432" is not a
number). libpq's ``PQconninfoParse``, which psycopg exposes as ``conninfo_to_dict``, reads every form
libpq accepts (URI or ``key=value``, several hosts, percent-encoding, any libpq parameter), so the URL
means exactly what it means to ``psql``. Hosts and ports go to Django as libpq's comma-separated lists;
the other parameters pass through as connection options.

What the URL does not say, the service settles so that no request waits on the database for long:

- ``connect_timeout``: seconds per host tried (psycopg waits at least 2).
- ``statement_timeout`` and ``lock_timeout``: the server cancels a statement that runs or waits too
  long; ``idle_in_transaction_session_timeout`` ends a session a dead client left inside a transaction.
- ``keepalives*`` and ``tcp_user_timeout``: the kernel gives up on a peer that stopped acknowledging
  (a crashed node, a partition) instead of waiting for TCP's default of many minutes.

A server that still acknowledges packets but answers nothing (a frozen process) escapes all of these;
``svc_common.storage.postgres_repository`` bounds every call from the client side for that case.
"""

from typing import Any

from django.core.exceptions import ImproperlyConfigured

# libpq parameters Django's own settings carry; everything else is an OPTIONS entry.
_DJANGO_KEYS = {"dbname": "NAME", "user": "USER", "password": "PASSWORD", "host": "HOST", "port": "PORT"}


def database_settings(
    url: str,
    *,
    connect_timeout: int,
    statement_timeout: float,
    pool_size: int,
    pool_timeout: float,
    application_name: str,
) -> dict[str, Any]:
    """The ``DATABASES["default"]`` entry for ``url``; parameters set in the URL win over the defaults."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        # libpq's message can quote the URL, password included: say what is wrong without it.
        raise ImproperlyConfigured("DATABASE_URL is not a libpq connection URI or key=value string") from exc
    if not params.get("dbname"):
        raise ImproperlyConfigured("DATABASE_URL must name a database")
    statement_ms = max(1, round(statement_timeout * 1000))
    options: dict[str, Any] = {
        "connect_timeout": str(connect_timeout),
        "application_name": application_name,
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        # Unacknowledged data: give up a little after the longest a statement may run.
        "tcp_user_timeout": str(statement_ms + 2000),
        "options": (
            f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms} "
            f"-c idle_in_transaction_session_timeout={max(statement_ms * 5, 10000)}"
        ),
    }
    entry: dict[str, Any] = {"ENGINE": "svc_common.storage.postgres_backend"}
    for key, value in params.items():
        if key in _DJANGO_KEYS:
            entry[_DJANGO_KEYS[key]] = value
        elif key == "options":
            options["options"] = f"{options['options']} {value}"  # later -c settings win
        else:
            options[key] = value
    # One pool per worker process (psycopg_pool, through Django). A gevent worker serves each client
    # connection in a greenlet of its own, and Django keeps a database connection per greenlet: kept
    # between requests, that would be one per client connection, without bound. From the pool, a
    # request borrows one and gives it back when it ends; at most ``pool_size`` are open, and a
    # request waits ``pool_timeout`` seconds at most for one (then 503). Each is checked when lent,
    # so a dead one is replaced instead of failing the request.
    options["pool"] = {
        "min_size": 1,
        "max_size": pool_size,
        "timeout": pool_timeout,
        "max_idle": 300,
        # A connection that cannot be made is retried in the background with a growing delay (1 s,
        # 2 s, 4 s, ...) for this long, then given up; the next request that needs one tries again at
        # once. Left at its default of 5 minutes, a pool could sit out a delay of tens of seconds
        # after the database was back. As long as a request would wait for one, then.
        "reconnect_timeout": pool_timeout,
    }
    entry.update(
        OPTIONS=options,
        CONN_MAX_AGE=0,  # the pool keeps connections; Django refuses both at once
        # Each connection is checked as it is lent (a dead one is replaced instead of failing the
        # request), by the backend, within a bound: Django's own check has none (postgres_backend).
        CONN_HEALTH_CHECKS=False,
        # Every repository call picks its own transaction scope.
        ATOMIC_REQUESTS=False,
    )
    return entry
