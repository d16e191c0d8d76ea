"""Gunicorn's own log lines as JSON on stdout, like the services' lines (``logger_class`` in gunicorn_conf).

Error log (boot, signals, worker deaths, tracebacks): one JSON object per record, with the message as
``event``. Gunicorn's access log is off: Django writes each request's one line (svc_common.request_log),
and gunicorn_errors logs the requests gunicorn refuses before Django sees them.
"""

import logging
import os
import sys
from typing import Any

from gunicorn import glogging

from svc_common.logging import json_formatter, service_name


def use_app_settings(app_uri: str | None) -> None:
    """Point Django at the served app's settings (``user_service.wsgi:application`` ->
    ``user_service.settings``), as its WSGI module would, but already in the master: the master's
    lines name the service, and each worker's tracing is set up (post_fork) before the app loads."""
    module = (app_uri or "").split(":", 1)[0]
    if module.endswith(".wsgi"):
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", module.removesuffix(".wsgi") + ".settings")


class JsonLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn ships no type information
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        use_app_settings(cfg.wsgi_app or cfg.default_proc_name)
        service_name()  # import the settings now rather than while formatting the first line
        formatter = json_formatter()
        root = logging.getLogger()
        if not root.handlers:
            # Until Django applies settings.LOGGING (when a worker loads the app), anything logged by
            # other code (the master, post_fork) would reach stderr as plain text; Django replaces this.
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
