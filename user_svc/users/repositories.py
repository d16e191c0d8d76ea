"""Where users are stored; the backend is chosen by ``REPOSITORY_BACKEND``."""

from functools import cache

from django.conf import settings

from svc_common.repository import InMemoryRepository, Repository
from users.entities import User


def email_key(email: str) -> str:
    """Emails are unique regardless of case."""
    return email.casefold()


class UserStorageRules:
    """What every user backend enforces, declared once so memory and Redis cannot drift apart."""

    def unique_keys(self, entity: User) -> dict:
        return {"email": email_key(entity.email)}


class InMemoryUserRepository(UserStorageRules, InMemoryRepository[User]):
    pass


@cache
def get_user_repository() -> Repository[User]:
    if settings.REPOSITORY_BACKEND == "redis":
        from users.redis_repository import RedisUserRepository

        return RedisUserRepository.from_settings()
    return InMemoryUserRepository()
