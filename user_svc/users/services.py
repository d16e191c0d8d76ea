"""What the user service does, as plain functions the views call."""

import structlog

from svc_common.storage.idempotency import Created, fingerprint, replay
from svc_common.storage.repository import IdempotencyKeyTaken, Repository, UniqueViolation
from users.entities import User
from users.metrics import USERS_CREATED

logger = structlog.get_logger(__name__)


class EmailAlreadyRegistered(Exception):
    """Another user already has this email address (compared case-insensitively)."""


def create_user(
    *, name: str, email: str, repository: Repository[User], idempotency_key: str | None = None
) -> Created[User]:
    """Store a new user. With an idempotency key already stored by the same request, store nothing
    and return that request's user (``replayed``); stored by a different request: IdempotencyKeyReused.
    The key is checked before the email, so a retried create never finds its own email taken."""
    # Only ever compared with a stored key's fingerprint: not computed for requests without a key.
    request_fingerprint = fingerprint({"name": name, "email": email}) if idempotency_key is not None else None
    try:
        user = repository.add(
            User(id=None, name=name, email=email), idempotency_key=idempotency_key, fingerprint=request_fingerprint
        )
    except IdempotencyKeyTaken as taken:
        # Only ever raised for a request that sent a key, so both are set here.
        assert idempotency_key is not None and request_fingerprint is not None
        created = replay(taken.record, idempotency_key, request_fingerprint)
        structlog.contextvars.bind_contextvars(user_id=created.entity.id)
        logger.info("user_create_replayed", user_id=created.entity.id)
        return created
    except UniqueViolation:
        raise EmailAlreadyRegistered("A user with this email already exists.") from None
    USERS_CREATED.inc()
    structlog.contextvars.bind_contextvars(user_id=user.id)  # the rest of the request's lines too
    logger.info("user_created", user_id=user.id)
    return Created(user)
