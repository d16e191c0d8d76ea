"""Gunicorn's own log lines as JSON on stdout, like the services' lines (``logger_class`` in gunicorn_conf).

Error log (boot, signals, worker deaths, tracebacks): one JSON object per record, with the message as
``event``. Gunicorn's access log is off: Django writes each request's one line (svc_common.observability.access_log),
and gunicorn_errors logs the requests gunicorn refuses before Django sees them.
"""

import importlib
import logging
import sys
from typing import Any

from gunicorn import glogging

from svc_common.observability import log_config
from svc_common.observability.log_config import json_formatter


def name_the_service(app_uri: str | None) -> None:
    """Name the master's lines (and a worker's, until it loads the app) after the served project
    (``user_service.wsgi:application`` -> ``user_service.SERVICE_NAME``) without loading its
    settings: they import the database driver, which must come after gevent patches the worker."""
    module = (app_uri or "").split(":", 1)[0]
    if module.endswith(".wsgi"):
        project = importlib.import_module(module.removesuffix(".wsgi"))
        log_config.default_service_name = getattr(project, "SERVICE_NAME", log_config.default_service_name)


class JsonLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn ships no type information
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        name_the_service(cfg.wsgi_app or cfg.default_proc_name)
        formatter = json_formatter()
        root = logging.getLogger()
        if not root.handlers:
            # Until Django applies settings.LOGGING (when a worker loads the app), anything logged by
            # other code (the master, a worker before it loads the app) would reach stderr as plain text;
            # Django replaces this.
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(json_formatter())
            root.addHandler(handler)
            root.setLevel(self.loglevel)
        for handler in self.error_log.handlers:
            if not getattr(handler, "_gunicorn", False):
                continue
            if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)  # errorlog "-": every line on stdout, as the contract says
            handler.setFormatter(formatter)
