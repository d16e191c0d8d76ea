"""Django's PostgreSQL backend (``ENGINE = "svc_common.storage.postgres_backend"``), as Django's docs suggest for
changing a backend: a subclass of its ``DatabaseWrapper``.

The one change: a connection the pool lends is checked first, within the bound every database call
has (svc_common.storage.postgres_repository's call deadline). Django's own check (``CONN_HEALTH_CHECKS`` with a
pool) has no bound, and a frozen server, whose kernel still acknowledges packets, would hold it, and
the request with it, for as long as the connection lives. A connection that fails the check is given
back (the pool discards it and makes another) and the next one is tried, until the pool's timeout.
"""

import time
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.settings_dict["OPTIONS"].get("pool"):
            return super().get_new_connection(conn_params)
        from psycopg import Error
        from psycopg_pool import ConnectionPool

        from svc_common.storage.postgres_repository import bounded, call_timeout_from_settings

        deadline = time.monotonic() + settings.DATABASE_POOL_TIMEOUT
        while True:
            connection = super().get_new_connection(conn_params)  # from the pool
            try:
                with bounded(connection, call_timeout_from_settings()):
                    ConnectionPool.check_connection(connection)
            except Error:
                # Broken: given back, the pool closes it and makes a new one.
                self.pool.putconn(connection)  # type: ignore[attr-defined]  # Django 5.1+, untyped
                if time.monotonic() >= deadline:
                    raise
                continue
            return connection
