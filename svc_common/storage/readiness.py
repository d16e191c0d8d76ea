"""The connection ``/readyz`` checks PostgreSQL on: one per worker process, outside the request pool.

Readiness asks "can this pod reach a primary that takes writes?", not "is a pooled connection free?".
Borrowed from the pool, a probe waits behind the requests: when they all hold their connections (a
table locked for a while, a slow primary) every pod fails readiness at once and the Service is left
with no endpoint, though the database is healthy. So each worker keeps one connection of its own for
probes, opened on first use and again after any failure, and every check is bounded below the
kubelet's probe timeout (2 s): the server cancels the statement after ``CHECK_SECONDS`` and the
process-wide call deadline cuts the socket shortly after, for a server that answers nothing at all.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from svc_common.storage.repository import RepositoryUnavailable

# The whole check, under the probes' timeoutSeconds (k8s/base/*/deployment.yaml, 3 s) with room for the
# HTTP round trip; a new connection adds libpq's connect_timeout (DATABASE_CONNECT_TIMEOUT).
CHECK_SECONDS = 1.0


def readiness_connect_kwargs(entry: dict[str, Any]) -> dict[str, Any]:
    """psycopg.connect() arguments for the DATABASES ``entry`` (svc_common.storage.database): the same
    server, role, TLS and keepalives, its own application_name and a statement timeout of
    ``CHECK_SECONDS``; no pool."""
    options = {key: value for key, value in entry.get("OPTIONS", {}).items() if key != "pool"}
    kwargs: dict[str, Any] = {
        "dbname": entry["NAME"],
        **{key: entry[name] for key, name in (("user", "USER"), ("password", "PASSWORD")) if entry.get(name)},
        **{key: entry[name] for key, name in (("host", "HOST"), ("port", "PORT")) if entry.get(name)},
        **options,
    }
    kwargs["application_name"] = f"{options.get('application_name', 'svc')}-readiness"
    # Later -c settings win over the request connections' statement and lock timeouts.
    kwargs["options"] = f"{options.get('options', '')} -c statement_timeout={round(CHECK_SECONDS * 1000)}".strip()
    return kwargs


class ReadinessConnection:
    """One psycopg connection for readiness checks, per process; ``check()`` raises
    RepositoryUnavailable when the database cannot serve writes now."""

    def __init__(self, connect_kwargs: dict[str, Any]) -> None:
        self._connect_kwargs = connect_kwargs
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = os.getpid()

    def check(self) -> None:
        from psycopg import Error

        from svc_common.storage.postgres_repository import bounded

        # Probes come one at a time; one that finds the previous still running fails rather than queue.
        if not self._lock.acquire(timeout=CHECK_SECONDS):
            raise RepositoryUnavailable("postgres unavailable: the previous readiness check is still waiting")
        try:
            if self._pid != os.getpid():  # a forked worker: the parent's connection is not ours to use
                self._pid, self._connection = os.getpid(), None
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connect()
                with bounded(self._connection, CHECK_SECONDS + 0.5):
                    row = self._connection.execute("SELECT current_setting('transaction_read_only')").fetchone()
            except Error as exc:
                self._discard()
                raise RepositoryUnavailable(f"postgres unavailable: {type(exc).__name__}: {exc}".strip()) from exc
            if row is None or row[0] == "on":
                self._discard()  # a new connection next time, on whichever node is primary then
                raise RepositoryUnavailable("postgres unavailable: connected to a read-only node")
        finally:
            self._lock.release()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(**self._connect_kwargs, autocommit=True)

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


_connections: dict[str, ReadinessConnection] = {}
_connections_lock = threading.Lock()


def readiness_connection(alias: str = "default") -> ReadinessConnection:
    """The process's ReadinessConnection for the Django database ``alias``."""
    from django.conf import settings

    with _connections_lock:
        if alias not in _connections:
            _connections[alias] = ReadinessConnection(readiness_connect_kwargs(settings.DATABASES[alias]))
        return _connections[alias]
