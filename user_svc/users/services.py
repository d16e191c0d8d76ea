"""What the user service does, as plain functions the views call."""

import structlog

from svc_common.repository import Repository, UniqueViolation
from users.entities import User
from users.metrics import USERS_CREATED

logger = structlog.get_logger(__name__)


class EmailAlreadyRegistered(Exception):
    """Another user already has this email address (compared case-insensitively)."""


def create_user(*, name: str, email: str, repository: Repository[User]) -> User:
    try:
        user = repository.add(User(id=None, name=name, email=email))
    except UniqueViolation:
        raise EmailAlreadyRegistered("A user with this email already exists.") from None
    USERS_CREATED.inc()
    structlog.contextvars.bind_contextvars(user_id=user.id)  # the rest of the request's lines too
    logger.info("user_created", user_id=user.id)
    return user
