"""The user service's storage rules and its in-memory backend; ``settings.REPOSITORY_CLASS`` picks the
backend (see ``svc_common.storage.repository.get_repository``)."""

from svc_common.storage.repository import InMemoryRepository
from users.entities import User


def email_key(email: str) -> str:
    """Emails are unique regardless of case."""
    return email.casefold()


class UserStorageRules:
    """What every user backend enforces, declared once so that the backends cannot drift apart."""

    def unique_keys(self, entity: User) -> dict[str, str]:
        return {"email": email_key(entity.email)}


class InMemoryUserRepository(UserStorageRules, InMemoryRepository[User]):
    pass
