"""Gunicorn's own log lines as JSON on stdout, like the services' lines (``logger_class`` in gunicorn_conf).

Error log (boot, signals, worker deaths, tracebacks): one JSON object per record, with the message as
``event``. Access log: one JSON object per request with method, path (no query string), status,
duration_ms, bytes, pid, and the request_id and trace_id that Django handled the request under
(handed over in the WSGI environ by svc_common.middleware.AccessLogContextMiddleware; a request
that never reached it falls back to its x-request-id header, or a new id). LOG_LEVEL applies to both logs.
"""

import contextlib
import logging
import os
import sys
import uuid
from typing import Any

import structlog
from gunicorn import glogging

from svc_common.logging import ENVIRON_REQUEST_ID, ENVIRON_TRACE_ID, json_formatter, service_name

ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "bytes", "pid", "request_id", "trace_id")


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
        self.access_log.setLevel(max(logging.INFO, self.loglevel))  # LOG_LEVEL=WARNING silences access lines too
        formatter = json_formatter(extra_pre_chain=[structlog.stdlib.ExtraAdder(allow=ACCESS_FIELDS)])
        root = logging.getLogger()
        if not root.handlers:
            # Until Django applies settings.LOGGING (when a worker loads the app), anything logged by
            # other code (the master, post_fork) would reach stderr as plain text; Django replaces this.
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(json_formatter())
            root.addHandler(handler)
            root.setLevel(self.loglevel)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if not getattr(handler, "_gunicorn", False):
                    continue
                if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
                    handler.setStream(sys.stdout)  # errorlog "-": every line on stdout, as the contract says
                handler.setFormatter(formatter)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        with contextlib.suppress(TypeError, ValueError):
            status = int(status)
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": status,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "pid": os.getpid(),
            # A request gunicorn refused itself (an invalid Content-Length, say) never reached Django,
            # which names every request; name it here, so every access line can be looked up by id.
            "request_id": environ.get(ENVIRON_REQUEST_ID) or environ.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex,
            "trace_id": environ.get(ENVIRON_TRACE_ID),
        }
        try:
            self.access_log.info("access", extra={key: value for key, value in fields.items() if value is not None})
        except Exception:
            self.exception("access log line failed")
