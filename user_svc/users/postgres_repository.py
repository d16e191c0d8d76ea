"""Users in PostgreSQL (``REPOSITORY_BACKEND=postgres``): emails unique regardless of case, enforced by
the database across every worker and instance."""

from typing import Any

from svc_common.storage.postgres_repository import PostgresRepository
from users.entities import User
from users.models import UserIdempotencyKey, UserRow
from users.repositories import UserStorageRules


class PostgresUserRepository(UserStorageRules, PostgresRepository[User]):
    model = UserRow
    key_model = UserIdempotencyKey
    unique_constraints = {"users_email_key_unique": "email"}

    def to_entity(self, row: Any) -> User:
        return User(id=row.id, name=row.name, email=row.email)

    def insert(self, entity: User) -> UserRow:
        return UserRow.objects.using(self.using).create(
            name=entity.name, email=entity.email, email_key=self.unique_keys(entity)["email"]
        )
