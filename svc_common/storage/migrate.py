"""``manage.py migrate`` that several processes may run at once: each service's app exposes this
command under Django's name, so every way of migrating (manage_all.sh, Compose's one-off service,
the Kubernetes init container of each replica) goes through it.

On PostgreSQL the migration runs under a session-level advisory lock: replicas starting together
migrate one after the other, and every one after the first finds nothing left to apply. Django's own
migrate takes no lock, and two of them racing would both try to create the same tables. A process
that dies releases the lock with its session.
"""

import time
from typing import Any

from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import connections

# Any constant both replicas agree on; one service's database is never shared with the other.
MIGRATION_LOCK_ID = 0x6D696772617465  # "migrate"
LOCK_WAIT_SECONDS = 300


class Command(DjangoMigrate):
    help = "Apply migrations, one process at a time per database (PostgreSQL advisory lock)."

    def handle(self, *args: Any, **options: Any) -> Any:
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            return super().handle(*args, **options)
        with connection.cursor() as cursor:
            # A long index build may outlast the services' statement timeout; lock_timeout stays, so
            # DDL fails rather than queueing live traffic behind a long transaction.
            cursor.execute("SET statement_timeout = 0")
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while not cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATION_LOCK_ID]).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise CommandError(f"another migrate held the lock for over {LOCK_WAIT_SECONDS}s")
                if options["verbosity"] >= 1:
                    self.stdout.write("waiting for another migrate to finish")
                time.sleep(1)
        try:
            return super().handle(*args, **options)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_ID])
