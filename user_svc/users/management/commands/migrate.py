"""Django's migrate, serialised across processes (see svc_common.migrate)."""

from svc_common.migrate import Command

__all__ = ["Command"]
