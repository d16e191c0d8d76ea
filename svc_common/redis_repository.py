"""A Repository kept in Redis, shared by every worker and instance pointed at the same server.

Keys, all under the service's prefix ``P``:

- ``P next_id``                  INCR counter handing out ids
- ``P entity:<id>``              the entity as a JSON object
- ``P index``                    sorted set of every id (score = id), for count and paging
- ``P by:<field>:<value>``       sorted set of ids per value of an indexed field (orders by user_id)
- ``P unique:<field>:<key>``     the id holding a unique value (users' case-folded email)
- ``P idempotency:<key>``        hash {id, fingerprint}: the entity a request with this
                                 ``Idempotency-Key`` stored, and that request's fingerprint; it
                                 expires after ``IDEMPOTENCY_TTL_SECONDS`` (24 h)

An add is one Lua script, so it is atomic: either the idempotency key is already held or the unique
check fails, and nothing is written (not even the id counter), or the id is taken and every key above
is written. Ids are taken inside the script, so they are committed in id order and paging by offset
never sees a gap fill in later. A held idempotency key is checked first and answers with the entity
stored under it, so a retried create whose first answer was lost (the script ran after the client
gave up) finds its entity instead of a unique clash or a second copy.

The script touches keys it cannot name up front (the id is only known inside it), which a single
Redis server allows; it would need hash tags to run on Redis Cluster.

Every ``ConnectionError``/``TimeoutError`` (and the replies that mean "this server cannot take the
request now": LOADING, READONLY, OOM, MISCONF, ...) becomes ``RepositoryUnavailable``, which the API
answers with 503. The client never retries on its own: a retried write whose reply was lost could
store an order twice or report a user's own email as taken. With retries off, a request against a
dead or hung server fails within about one connect timeout plus one socket timeout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from svc_common.repository import (
    IDEMPOTENCY_TTL_SECONDS,
    Entity,
    IdempotencyKeyTaken,
    IdempotentRecord,
    RepositoryUnavailable,
    UniqueViolation,
)

T = TypeVar("T", bound=Entity)

HEALTH_CHECK_INTERVAL = 15  # seconds a pooled connection may sit idle before it is PINGed on reuse

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # refused, reset, auth, LOADING (BusyLoadingError), too many clients
    redis.exceptions.TimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    ClusterDownError,
    TryAgainError,
)

# The document the script stores is '{"id":<id>' followed by the tail of ``to_json(entity with
# id=None)``, so ``to_json`` must write the id first and compactly.
_ID_PLACEHOLDER = '{"id":null'

_ADD_SCRIPT = """
local prefix = ARGV[1]
local tail = ARGV[2]
local idempotency_key = ARGV[3]
if idempotency_key ~= '' then
  local held = redis.call('HMGET', prefix .. 'idempotency:' .. idempotency_key, 'id', 'fingerprint')
  if held[1] then
    return {held[2], redis.call('GET', prefix .. 'entity:' .. held[1])}
  end
end
local n_unique = tonumber(ARGV[6])
local pos = 7
for _ = 1, n_unique do
  if redis.call('EXISTS', prefix .. 'unique:' .. ARGV[pos] .. ':' .. ARGV[pos + 1]) == 1 then
    return ARGV[pos]
  end
  pos = pos + 2
end
local id = redis.call('INCR', prefix .. 'next_id')
local id_text = string.format('%d', id)
redis.call('SET', prefix .. 'entity:' .. id_text, '{"id":' .. id_text .. tail)
redis.call('ZADD', prefix .. 'index', id, id_text)
pos = 7
for _ = 1, n_unique do
  redis.call('SET', prefix .. 'unique:' .. ARGV[pos] .. ':' .. ARGV[pos + 1], id_text)
  pos = pos + 2
end
local n_indexed = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, n_indexed do
  redis.call('ZADD', prefix .. 'by:' .. ARGV[pos] .. ':' .. ARGV[pos + 1], id, id_text)
  pos = pos + 2
end
if idempotency_key ~= '' then
  local key = prefix .. 'idempotency:' .. idempotency_key
  redis.call('HSET', key, 'id', id_text, 'fingerprint', ARGV[4])
  redis.call('EXPIRE', key, tonumber(ARGV[5]))
end
return id
"""


@contextmanager
def storage_errors() -> Iterator[None]:
    """Turn "Redis cannot serve this now" into RepositoryUnavailable; let real bugs through."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise RepositoryUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from exc
    except ResponseError as exc:
        if str(exc).startswith(("MISCONF", "MASTERDOWN", "NOREPLICAS")):
            raise RepositoryUnavailable(f"redis unavailable: {exc}") from exc
        raise


def make_client(url: str, socket_timeout: float) -> redis.Redis:
    """A pooled, thread-safe client that fails fast instead of retrying or waiting forever."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        decode_responses=True,
    )


class RedisRepository(Generic[T]):
    """Subclasses set ``indexed_fields``, may override ``unique_keys``, and provide ``to_json`` and
    ``from_json`` (entity <-> JSON object text, id first; see ``_ID_PLACEHOLDER``)."""

    indexed_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.idempotency_ttl = IDEMPOTENCY_TTL_SECONDS
        self._add_script = client.register_script(_ADD_SCRIPT)

    @classmethod
    def from_url(cls, url: str, prefix: str, socket_timeout: float = 1.0) -> Self:
        return cls(make_client(url, socket_timeout), prefix)

    @classmethod
    def from_settings(cls) -> Self:
        from django.conf import settings

        return cls.from_url(settings.REDIS_URL, settings.REDIS_KEY_PREFIX, settings.REDIS_SOCKET_TIMEOUT)

    # What subclasses provide.

    def unique_keys(self, entity: T) -> dict[str, Any]:
        """Map of field name to the normalised value that must be unique; none by default."""
        return {}

    def to_json(self, entity: T) -> str:
        raise NotImplementedError

    def from_json(self, raw: str) -> T:
        raise NotImplementedError

    # The Repository protocol.

    def get(self, entity_id: int) -> T | None:
        with storage_errors():
            raw = self.client.get(self._entity_key(entity_id))
        return None if raw is None else self.from_json(cast(str, raw))

    def add(self, entity: T, idempotency_key: str | None = None, fingerprint: str | None = None) -> T:
        document = self.to_json(dataclasses.replace(entity, id=None))
        if not document.startswith(_ID_PLACEHOLDER):
            raise ValueError(f"to_json must write the id first, compactly: {document[:40]!r}")
        if idempotency_key == "":
            raise ValueError("an idempotency key is never empty")
        args: list[Any] = [
            self.prefix,
            document[len(_ID_PLACEHOLDER) :],
            idempotency_key or "",
            fingerprint or "",
            int(self.idempotency_ttl),
        ]
        unique = self.unique_keys(entity)
        args.append(len(unique))
        for field, key in unique.items():
            args += [field, str(key)]
        args.append(len(self.indexed_fields))
        for field in self.indexed_fields:
            args += [field, str(getattr(entity, field))]
        with storage_errors():
            result = self._add_script(keys=[], args=args)
        if isinstance(result, list):  # the key was held: [fingerprint, document]
            held_fingerprint, raw = result
            raise IdempotencyKeyTaken(IdempotentRecord(self.from_json(raw), held_fingerprint))
        if isinstance(result, str):
            raise UniqueViolation(result)
        return dataclasses.replace(entity, id=int(result))

    def find_by_idempotency_key(self, idempotency_key: str) -> IdempotentRecord[T] | None:
        with storage_errors():
            entity_id, held_fingerprint = self.client.hmget(self._idempotency_key(idempotency_key), "id", "fingerprint")
            if entity_id is None:
                return None
            raw = self.client.get(self._entity_key(int(entity_id)))
        # An entity is written in the same script as its key and never deleted.
        return IdempotentRecord(self.from_json(cast(str, raw)), cast(str, held_fingerprint))

    def count(self, **filters: Any) -> int:
        with storage_errors():
            return int(self.client.zcard(self._index_key(filters)))

    def page(self, offset: int, limit: int, **filters: Any) -> list[T]:
        if limit <= 0:
            return []  # ZRANGE 0 -1 would mean "everything"
        offset = max(offset, 0)
        index = self._index_key(filters)
        with storage_errors():
            ids = self.client.zrange(index, offset, offset + limit - 1)
            if not ids:
                return []
            documents = self.client.mget([self._entity_key(int(entity_id)) for entity_id in cast(list[str], ids)])
        # Entities are never deleted, and an id enters the index in the same script as its entity.
        return [self.from_json(raw) for raw in cast(list[str | None], documents) if raw is not None]

    def ping(self) -> None:
        with storage_errors():
            self.client.ping()

    # Keys.

    def _entity_key(self, entity_id: int) -> str:
        return f"{self.prefix}entity:{int(entity_id)}"

    def _idempotency_key(self, idempotency_key: str) -> str:
        return f"{self.prefix}idempotency:{idempotency_key}"

    def _index_key(self, filters: dict[str, Any]) -> str:
        if not filters:
            return f"{self.prefix}index"
        ((field, value),) = filters.items()
        if field not in self.indexed_fields:
            raise KeyError(f"{field!r} is not an indexed field of {type(self).__name__}")
        return f"{self.prefix}by:{field}:{value}"
