"""The storage interface both services use, and its thread-safe in-memory implementation."""

import dataclasses
import threading
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class RepositoryUnavailable(Exception):
    """The storage backend cannot be reached; the request should fail with 503, not 500."""


class UniqueViolation(Exception):
    """Another stored entity already holds this unique value."""

    def __init__(self, field: str):
        super().__init__(field)
        self.field = field


class Repository(Protocol[T]):
    """What views and services may ask of storage. Entities are dataclasses with an ``id`` field."""

    def get(self, entity_id: int) -> T | None: ...

    def add(self, entity: T) -> T:
        """Store a new entity under a fresh, increasing id and return it with that id."""

    def count(self, **filters: Any) -> int: ...

    def page(self, offset: int, limit: int, **filters: Any) -> list[T]:
        """Entities in id order, optionally filtered on one indexed field."""

    def ping(self) -> None:
        """Raise RepositoryUnavailable when storage cannot serve requests."""


class InMemoryRepository(Generic[T]):
    """Lives in one process only: under several gunicorn workers each would hand out the same ids.

    Subclasses name the fields they filter on (``indexed_fields``) and may override ``unique_keys``.
    """

    indexed_fields: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, T] = {}
        self._ids: list[int] = []
        self._next_id = 1
        self._unique: dict[str, set] = {}
        self._indexes: dict[str, dict[Any, list[int]]] = {name: {} for name in self.indexed_fields}

    def unique_keys(self, entity: T) -> dict[str, Any]:
        """Map of field name to the normalised value that must be unique; none by default."""
        return {}

    def get(self, entity_id: int) -> T | None:
        with self._lock:
            return self._rows.get(entity_id)

    def add(self, entity: T) -> T:
        keys = self.unique_keys(entity)
        with self._lock:
            for field, key in keys.items():
                if key in self._unique.get(field, ()):
                    raise UniqueViolation(field)
            stored = dataclasses.replace(entity, id=self._next_id)
            self._next_id += 1
            self._rows[stored.id] = stored
            self._ids.append(stored.id)
            for field, key in keys.items():
                self._unique.setdefault(field, set()).add(key)
            for field, index in self._indexes.items():
                index.setdefault(getattr(stored, field), []).append(stored.id)
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
            ids = self._ids_for(filters)[offset : offset + limit]
            return [self._rows[entity_id] for entity_id in ids]

    def ping(self) -> None:
        return None
