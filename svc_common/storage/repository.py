"""The storage interface both services use, and its thread-safe in-memory implementation."""

import dataclasses
import functools
import pickle
import threading
import time
from collections import OrderedDict
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from django.conf import settings
from django.utils.module_loading import import_string


class Entity(Protocol):
    """What repositories store: a frozen dataclass whose ``id`` is None until it is stored."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def id(self) -> int | None: ...


T = TypeVar("T", bound=Entity)


class RepositoryUnavailable(Exception):
    """The storage backend cannot be reached; the request should fail with 503, not 500."""


class UniqueViolation(Exception):
    """Another stored entity already holds this unique value."""

    def __init__(self, field: str):
        super().__init__(field)
        self.field = field


@dataclasses.dataclass(frozen=True)
class IdempotentRecord(Generic[T]):
    """The entity an idempotency key was stored with, and the fingerprint of that request."""

    entity: T
    fingerprint: str


class IdempotencyKeyTaken(Exception):
    """``add`` was given an idempotency key that is already stored: nothing was written."""

    def __init__(self, record: IdempotentRecord[Any]):
        super().__init__(f"idempotency key already holds entity {getattr(record.entity, 'id', None)}")
        self.record = record


# Ids are 64-bit signed integers in every backend (PostgreSQL's bigint): a larger one names nothing.
MAX_ENTITY_ID = 2**63 - 1

# How long a stored idempotency key is remembered (both backends); svc_common.storage.idempotency documents it.
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60


class Repository(Protocol[T]):
    """What views and services may ask of storage. Entities are dataclasses with an ``id`` field."""

    def get(self, entity_id: int) -> T | None: ...

    def add(self, entity: T, idempotency_key: str | None = None, fingerprint: str | None = None) -> T:
        """Store a new entity under a fresh, increasing id and return it with that id.

        With an ``idempotency_key``, the key and ``fingerprint`` are stored atomically with the entity
        (for ``IDEMPOTENCY_TTL_SECONDS``). A key already stored wins over everything else: nothing is
        written and ``IdempotencyKeyTaken`` carries the entity and fingerprint stored with it. Then a
        unique value already held raises ``UniqueViolation``, also writing nothing."""

    def find_by_idempotency_key(self, idempotency_key: str) -> IdempotentRecord[T] | None:
        """What ``add`` stored with this key, or None (never stored, or expired)."""

    def count(self, **filters: Any) -> int: ...

    def page(self, offset: int, limit: int, **filters: Any) -> list[T]:
        """Entities in id order, optionally filtered on one indexed field."""

    def ping(self) -> None:
        """Raise RepositoryUnavailable when storage cannot serve requests."""


class RepositoryBackend(Protocol[T]):
    """A repository class that ``settings.REPOSITORY_CLASS`` may name: it builds itself from settings."""

    @classmethod
    def from_settings(cls) -> Repository[T]: ...


@functools.cache
def get_repository() -> Repository[Any]:
    """This process's one repository: the class ``settings.REPOSITORY_CLASS`` names (DRF's idiom for
    pluggable classes), built once from settings. Each service stores one kind of entity."""
    backend: RepositoryBackend[Any] = import_string(settings.REPOSITORY_CLASS)
    return backend.from_settings()


class InMemoryRepository(Generic[T]):
    """Lives in one process only: under several gunicorn workers each would hand out the same ids.

    Subclasses name the fields they filter on (``indexed_fields``) and may override ``unique_keys``.

    Each entity is kept pickled, as a database keeps rows rather than objects, and read back on every
    ``get`` and ``page`` (about 1 us for a user, 4 us for an order). Kept as objects, every stored
    entity was two to four more objects for the garbage collector to walk at each full collection: the
    order service's full collections grew with the store, past 40 ms after 20,000 orders, and the
    event loop stands still for their length. A bytes object is not tracked by the collector, nor is
    a dict that holds only ints and bytes. Only this process's own pickles are ever loaded.
    """

    indexed_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, bytes] = {}  # id -> the pickled entity
        self._ids: list[int] = []
        self._next_id = 1
        self._unique: dict[str, set[Any]] = {}
        self._indexes: dict[str, dict[Any, list[int]]] = {name: {} for name in self.indexed_fields}
        # key -> (id, fingerprint, expiry), oldest first: expired keys are dropped from the front on add.
        self._idempotency: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
        self.idempotency_ttl = IDEMPOTENCY_TTL_SECONDS

    @classmethod
    def from_settings(cls) -> Self:
        return cls()

    def unique_keys(self, entity: T) -> dict[str, Any]:
        """Map of field name to the normalised value that must be unique; none by default."""
        return {}

    def get(self, entity_id: int) -> T | None:
        with self._lock:
            row = self._rows.get(entity_id)
        return None if row is None else _unpickled(row)

    def _idempotent_record(self, idempotency_key: str) -> IdempotentRecord[T] | None:
        """Under the lock: the live record for this key; an expired one is forgotten."""
        held = self._idempotency.get(idempotency_key)
        if held is None:
            return None
        entity_id, fingerprint, expires = held
        if time.monotonic() >= expires:
            del self._idempotency[idempotency_key]
            return None
        return IdempotentRecord(_unpickled(self._rows[entity_id]), fingerprint)

    def find_by_idempotency_key(self, idempotency_key: str) -> IdempotentRecord[T] | None:
        with self._lock:
            return self._idempotent_record(idempotency_key)

    def add(self, entity: T, idempotency_key: str | None = None, fingerprint: str | None = None) -> T:
        keys = self.unique_keys(entity)
        with self._lock:
            if idempotency_key is not None:
                record = self._idempotent_record(idempotency_key)
                if record is not None:
                    raise IdempotencyKeyTaken(record)
            for field, key in keys.items():
                if key in self._unique.get(field, ()):
                    raise UniqueViolation(field)
            new_id = self._next_id
            stored = dataclasses.replace(entity, id=new_id)
            self._next_id += 1
            self._rows[new_id] = pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL)
            self._ids.append(new_id)
            for field, key in keys.items():
                self._unique.setdefault(field, set()).add(key)
            for field, index in self._indexes.items():
                index.setdefault(getattr(stored, field), []).append(new_id)
            if idempotency_key is not None:
                now = time.monotonic()
                while self._idempotency and next(iter(self._idempotency.values()))[2] <= now:
                    self._idempotency.popitem(last=False)
                self._idempotency[idempotency_key] = (new_id, fingerprint or "", now + self.idempotency_ttl)
            return stored

    def _ids_for(self, filters: dict[str, Any]) -> list[int]:
        if not filters:
            return self._ids
        ((field, value),) = filters.items()
        return self._indexes[field].get(value, [])

    def count(self, **filters: Any) -> int:
        with self._lock:
            return len(self._ids_for(filters))

    def page(self, offset: int, limit: int, **filters: Any) -> list[T]:
        with self._lock:
            rows = [self._rows[entity_id] for entity_id in self._ids_for(filters)[offset : offset + limit]]
        return [_unpickled(row) for row in rows]

    def ping(self) -> None:
        return None


def _unpickled(row: bytes) -> Any:
    return pickle.loads(row)  # an InMemoryRepository's own pickle, never a client's bytes
