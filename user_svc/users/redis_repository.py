"""Users in Redis (``REPOSITORY_BACKEND=redis``): emails unique regardless of case, across every
worker and instance sharing the server."""

import json

from svc_common.redis_repository import RedisRepository
from users.entities import User
from users.repositories import UserStorageRules


def to_json(user: User) -> str:
    return json.dumps({"id": user.id, "name": user.name, "email": user.email}, separators=(",", ":"))


def from_json(raw: str) -> User:
    data = json.loads(raw)
    return User(id=data["id"], name=data["name"], email=data["email"])


class RedisUserRepository(UserStorageRules, RedisRepository[User]):
    def to_json(self, entity: User) -> str:
        return to_json(entity)

    def from_json(self, raw: str) -> User:
        return from_json(raw)
