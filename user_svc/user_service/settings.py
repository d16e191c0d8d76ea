"""User service settings: the shared base plus what names this service."""

from svc_common.settings_base import *
from svc_common.settings_base import DOMAIN_ERRORS, INSTALLED_APPS, SPECTACULAR_SETTINGS, databases, repository_class
from user_service import SERVICE_NAME  # the one place it is written (see user_service/__init__.py)

ROOT_URLCONF = "user_service.urls"
WSGI_APPLICATION = "user_service.wsgi.application"
INSTALLED_APPS = [*INSTALLED_APPS, "users"]

REPOSITORY_CLASS = repository_class(
    {
        "memory": "users.repositories.InMemoryUserRepository",
        "postgres": "users.postgres_repository.PostgresUserRepository",
    }
)
DOMAIN_ERRORS = {**DOMAIN_ERRORS, "users.services.EmailAlreadyRegistered": (409, None)}

DATABASES = databases(SERVICE_NAME)

SPECTACULAR_SETTINGS = {**SPECTACULAR_SETTINGS, "TITLE": "User service API"}
