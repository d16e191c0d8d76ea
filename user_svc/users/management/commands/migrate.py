"""Django's migrate, serialised across processes (see svc_common.storage.migrate)."""

from svc_common.storage.migrate import Command

__all__ = ["Command"]
