"""A Repository on PostgreSQL through the Django ORM (``REPOSITORY_BACKEND=postgres``).

Each service keeps its entities in its own database, as ORM rows that the repository turns into the
service's frozen dataclasses and back; views and services never see a model.

- Ids come from the table's identity sequence: unique and increasing across every worker and
  instance. A transaction that rolls back (a duplicate email) leaves a gap in the numbering, and two
  concurrent inserts may commit out of id order; nothing relies on ids being dense.
- Unique values are unique constraints in the database, so racing inserts on different connections
  cannot both win; a violation names its constraint, which ``unique_constraints`` maps to the field.
- An ``Idempotency-Key`` is a row (key, fingerprint, entity, expiry) written in the same transaction
  as the entity, so a create is stored with its key or not at all. The key is the primary key: of two
  racing requests with one key, the second waits for the first to commit and then fails on it, rolls
  back its own entity, and answers with the first one's. Expired keys are deleted a batch at a time
  by the adds that store keys, so the table holds about one day of keys and no cleanup job is needed.
- Every error that means "the database cannot serve this now" (refused, reset, timed out, shutting
  down, a read-only standby, too many connections) becomes ``RepositoryUnavailable``, answered 503;
  the connection is then dropped so that the next request opens a new one, which with libpq's
  ``target_session_attrs=read-write`` lands on whichever node is the primary by then. Nothing is
  retried here: a commit whose answer was lost may have happened, and only the client's
  Idempotency-Key can make its retry safe.
- Every call is bounded on the client side too (``CallDeadline``): the server's statement timeout
  cannot fire on a server that is frozen, and TCP keepalives do not help while its kernel still
  acknowledges packets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, ClassVar, Generic, Self, TypeVar

from django.db import DatabaseError, IntegrityError, connections, models, transaction
from django.utils import timezone

from svc_common.server.sockets import shut_down
from svc_common.storage.readiness import readiness_connection
from svc_common.storage.repository import (
    IDEMPOTENCY_TTL_SECONDS,
    MAX_ENTITY_ID,
    Entity,
    IdempotencyKeyTaken,
    IdempotentRecord,
    RepositoryUnavailable,
    UniqueViolation,
)

T = TypeVar("T", bound=Entity)

PURGE_BATCH = 100  # expired idempotency keys deleted per add that stores a key

# SQLSTATE classes and codes that mean "not now", not "your query is wrong": connection exceptions
# (08), insufficient resources (53), operator intervention such as shutdown or a cancelled statement
# (57: shutdown, statement timeout), system errors (58), a read-only transaction (25006: connected to
# a standby), a lock not granted in time (55P03), and a serialization failure or deadlock (40001, 40P01).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_UNAVAILABLE_CODES = {"25006", "55P03", "40001", "40P01"}


class IdempotencyKeyRow(models.Model):
    """A stored Idempotency-Key; each service's model adds ``entity``, a foreign key to its entity row."""

    key = models.CharField(primary_key=True, max_length=255)
    fingerprint = models.CharField(max_length=128)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        abstract = True


def _sqlstate(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None)


def is_unavailable(exc: DatabaseError) -> bool:
    """Whether ``exc`` means the database cannot serve requests now (rather than a bug in a query)."""
    from django.db import InterfaceError, OperationalError

    if isinstance(exc, InterfaceError | OperationalError):
        return True
    state = _sqlstate(exc)
    return state is not None and (state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_CODES)


class CallDeadline:
    """Shuts down the socket of a database call still running past its deadline.

    One watchdog thread per process checks the calls in flight a few times a second. Shutting the
    socket down makes psycopg's wait end at once with "server closed the connection", which becomes
    503 like any other lost connection, and Django discards that connection.
    """

    TICK = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[float, Any]] = {}
        self._next_token = 0
        self._pid = 0

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # none yet, or this is a forked worker: the parent's did not follow
            self._pid = os.getpid()
            threading.Thread(target=self._watch, name="db-call-deadline", daemon=True).start()

    @contextmanager
    def bound(self, wrapper: Any, seconds: float) -> Iterator[None]:
        with self._lock:
            self._ensure_thread()
            token = self._next_token
            self._next_token += 1
            self._calls[token] = (time.monotonic() + seconds, wrapper)
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(token, None)

    def _watch(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                late = [token for token, (deadline, _) in self._calls.items() if deadline <= now]
                wrappers = [self._calls.pop(token)[1] for token in late]
            for wrapper in wrappers:
                _shut_down(wrapper)


def _shut_down(wrapper: Any) -> None:
    """``wrapper``: Django's connection wrapper, or a psycopg connection (the pool check of
    svc_common.storage.postgres_backend). psycopg's wait then ends with "server closed the connection"."""
    pg = getattr(wrapper, "connection", None) if hasattr(wrapper, "ensure_connection") else wrapper
    try:
        fd = pg.pgconn.socket if pg is not None else -1
    except Exception:  # closed meanwhile: nothing left to cut
        return
    shut_down(fd)


_deadline = CallDeadline()


def call_timeout_from_settings() -> float:
    """How long any database call may take: a little longer than the server's own statement
    timeout, which should fire first."""
    from django.conf import settings

    return float(settings.DATABASE_STATEMENT_TIMEOUT) + 1.0


def bounded(connection: Any, seconds: float) -> contextlib.AbstractContextManager[None]:
    """A call on a psycopg connection of the pool, cut like every database call past ``seconds``."""
    return _deadline.bound(connection, seconds)


class PostgresRepository(Generic[T]):
    """Subclasses name their ``model`` (whose rows hold the entities), ``key_model`` (an
    ``IdempotencyKeyRow`` with ``entity``), ``unique_constraints`` (constraint name -> field), and
    provide ``to_entity`` (row -> entity) and ``insert`` (entity -> saved row)."""

    # Concrete models: their default managers (``objects``) are what the repository reads and writes.
    model: ClassVar[type[Any]]
    key_model: ClassVar[type[Any]]
    unique_constraints: ClassVar[dict[str, str]] = {}
    indexed_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, using: str = "default", call_timeout: float = 3.0) -> None:
        self.using = using
        self.call_timeout = call_timeout
        self.idempotency_ttl = IDEMPOTENCY_TTL_SECONDS

    @classmethod
    def from_settings(cls) -> Self:
        return cls(call_timeout=call_timeout_from_settings())

    # What subclasses provide.

    def to_entity(self, row: Any) -> T:
        raise NotImplementedError

    def insert(self, entity: T) -> Any:
        """Write ``entity`` (id None) as rows inside the caller's transaction; return the main row."""
        raise NotImplementedError

    def rows(self) -> models.QuerySet[Any]:
        """The rows ``get`` and ``page`` read (subclasses add prefetching)."""
        rows: models.QuerySet[Any] = self.model.objects.using(self.using)
        return rows

    # Errors and bounds.

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Every database call: bounded in time, "not now" errors as RepositoryUnavailable."""
        wrapper = connections[self.using]
        try:
            with _deadline.bound(wrapper, self.call_timeout):
                yield
        except DatabaseError as exc:
            if isinstance(exc, IntegrityError) or not is_unavailable(exc):
                raise
            if not wrapper.in_atomic_block:
                wrapper.close()  # a new connection next time, on whichever node is primary then
            raise RepositoryUnavailable(f"postgres unavailable: {type(exc).__name__}: {exc}".strip()) from exc

    # The Repository protocol.

    def get(self, entity_id: int) -> T | None:
        if not 0 < entity_id <= MAX_ENTITY_ID:  # bigint: a larger id is not an error, just absent
            return None
        with self._call():
            row = self.rows().filter(pk=entity_id).first()
        return None if row is None else self.to_entity(row)

    def add(self, entity: T, idempotency_key: str | None = None, fingerprint: str | None = None) -> T:
        if idempotency_key == "":
            raise ValueError("an idempotency key is never empty")
        with self._call():
            try:
                with transaction.atomic(using=self.using):
                    if idempotency_key is not None:
                        held = self._held(idempotency_key)
                        if held is not None:
                            raise IdempotencyKeyTaken(held)
                        self._purge_expired(idempotency_key)
                    row = self.insert(dataclasses.replace(entity, id=None))
                    if idempotency_key is not None:
                        self.key_model.objects.using(self.using).create(
                            key=idempotency_key,
                            fingerprint=fingerprint or "",
                            entity=row,
                            expires_at=timezone.now() + timedelta(seconds=self.idempotency_ttl),
                        )
                    # COMMIT waits for the synchronous standby's flush, and a statement timeout
                    # cancelling that wait would make PostgreSQL answer "committed" with the commit on
                    # the primary alone. So COMMIT runs without one: the wait is bounded from this side
                    # (CallDeadline), and a 201 always means "on two nodes" when a standby is required.
                    with connections[self.using].cursor() as cursor:
                        cursor.execute("SET LOCAL statement_timeout = 0")
            except IntegrityError as exc:
                # The key first: a retry whose first attempt committed meanwhile clashes on the
                # entity's unique values too, and must get its entity back, not a 409.
                if idempotency_key is not None:
                    held = self._held(idempotency_key)
                    if held is not None:
                        raise IdempotencyKeyTaken(held) from None
                constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
                if constraint in self.unique_constraints:
                    raise UniqueViolation(self.unique_constraints[constraint]) from None
                raise
        return dataclasses.replace(entity, id=row.pk)

    def find_by_idempotency_key(self, idempotency_key: str) -> IdempotentRecord[T] | None:
        with self._call():
            return self._held(idempotency_key)

    def count(self, **filters: Any) -> int:
        self._check_filters(filters)
        with self._call():
            count: int = self.model.objects.using(self.using).filter(**filters).count()
            return count

    def page(self, offset: int, limit: int, **filters: Any) -> list[T]:
        self._check_filters(filters)
        if limit <= 0:
            return []
        offset = max(offset, 0)
        with self._call():
            rows = list(self.rows().filter(**filters).order_by("pk")[offset : offset + limit])
        return [self.to_entity(row) for row in rows]

    def ping(self) -> None:
        """Readiness: the database takes writes (a primary, not a standby), checked on the worker's own
        readiness connection rather than one borrowed from the request pool
        (svc_common.storage.readiness)."""
        readiness_connection(self.using).check()

    # Helpers.

    def _held(self, idempotency_key: str) -> IdempotentRecord[T] | None:
        held = (
            self.key_model.objects.using(self.using)
            .filter(key=idempotency_key, expires_at__gt=timezone.now())
            .values_list("entity_id", "fingerprint")
            .first()
        )
        if held is None:
            return None
        entity_id, held_fingerprint = held
        # An entity is written in the same transaction as its key and never deleted.
        return IdempotentRecord(self.to_entity(self.rows().get(pk=entity_id)), held_fingerprint)

    def _purge_expired(self, idempotency_key: str) -> None:
        """Delete a batch of expired keys, this one included if it expired; rows another add is
        purging right now are skipped, not waited for."""
        table = self.key_model._meta.db_table
        now = timezone.now()
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"""DELETE FROM {table} WHERE key IN (
                      SELECT key FROM {table} WHERE expires_at <= %s ORDER BY expires_at LIMIT %s
                      FOR UPDATE SKIP LOCKED
                    ) OR (key = %s AND expires_at <= %s)""",
                [now, PURGE_BATCH, idempotency_key, now],
            )

    def _check_filters(self, filters: dict[str, Any]) -> None:
        unknown = set(filters) - set(self.indexed_fields)
        if unknown:
            raise KeyError(f"{sorted(unknown)} not indexed fields of {type(self).__name__}")
