"""User service settings: the shared base plus what names this service."""

from svc_common.env import env_str
from svc_common.settings_base import *
from svc_common.settings_base import DOMAIN_ERRORS, INSTALLED_APPS, SPECTACULAR_SETTINGS, repository_class

SERVICE_NAME = "user-svc"
ROOT_URLCONF = "user_service.urls"
WSGI_APPLICATION = "user_service.wsgi.application"
INSTALLED_APPS = [*INSTALLED_APPS, "users"]

REPOSITORY_CLASS = repository_class(
    {
        "memory": "users.repositories.InMemoryUserRepository",
        "redis": "users.redis_repository.RedisUserRepository",
    }
)
DOMAIN_ERRORS = {**DOMAIN_ERRORS, "users.services.EmailAlreadyRegistered": (409, None)}

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "users:")

SPECTACULAR_SETTINGS = {**SPECTACULAR_SETTINGS, "TITLE": "User service API"}
