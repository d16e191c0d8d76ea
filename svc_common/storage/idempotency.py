"""Idempotency keys for POST: a client that retries a create after a timeout (a lost answer, a
commit that outlived the service's deadline, its own deadline) sends the same ``Idempotency-Key`` header again and
gets the entity the first attempt stored, instead of a 409 or a second order.

The repositories store the key atomically with the entity (see ``Repository.add``), together with a
fingerprint of the validated request; a key is remembered for ``IDEMPOTENCY_TTL_SECONDS`` (24 h).
The service functions decide: same key and same fingerprint is a replay, same key and a different
fingerprint is refused (422), and nothing is stored for either.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, NamedTuple, TypeVar

from rest_framework.exceptions import ValidationError

from svc_common.storage.repository import IDEMPOTENCY_TTL_SECONDS, Entity, IdempotentRecord

__all__ = [
    "IDEMPOTENCY_TTL_SECONDS",
    "Created",
    "IdempotencyKeyReused",
    "fingerprint",
    "idempotency_key_from",
    "replay",
]

T = TypeVar("T", bound=Entity)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Printable ASCII (space to ~), not starting or ending with a space: HTTP strips those anyway.
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
_KEY_RE = re.compile(KEY_PATTERN)


class IdempotencyKeyReused(Exception):
    """The key already belongs to a request with different data."""

    def __init__(self, key: str):
        super().__init__(
            f'Idempotency-Key "{key}" was used with a different request; send a new key for a new request.'
        )
        self.key = key


class Created(NamedTuple, Generic[T]):
    """What a create service function returns: the stored entity, and whether it was stored by an
    earlier request with the same idempotency key (then nothing was stored now)."""

    entity: T
    replayed: bool = False


def idempotency_key_from(headers: Mapping[str, str]) -> str | None:
    """The request's ``Idempotency-Key``, or None without one; a malformed key is a 400."""
    key = headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        problem = f"must be 1 to {MAX_KEY_LENGTH} characters long, not {len(key)}."
    elif not _KEY_RE.match(key):
        problem = "must be printable ASCII characters only, not starting or ending with a space."
    else:
        return key
    raise ValidationError({HEADER: [f"The {HEADER} header {problem}"]})


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def fingerprint(data: Any) -> str:
    """sha256 of the canonical JSON of validated request data (sorted keys, no spaces, decimals as
    their validated strings), so the same request gives the same fingerprint in every process."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


def replay(record: IdempotentRecord[T], key: str, request_fingerprint: str) -> Created[T]:
    """The earlier request's entity if this request is the same one, else IdempotencyKeyReused."""
    if record.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(key)
    return Created(record.entity, replayed=True)
