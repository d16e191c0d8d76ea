"""Gunicorn's own log lines as JSON on stdout, like the services' lines: gunicorn's documented
``logconfig_dict`` setting (gunicorn_conf), with the services' own logging configuration.

Gunicorn applies ``logconfig_dict`` with ``logging.config.dictConfig`` in the master, before it forks
the workers. Its ``gunicorn.error`` logger (boot, signals, worker deaths, tracebacks) gets no handler of
its own (gunicorn's default one for ``errorlog = "-"`` writes plain text to stderr) and propagates to
the root logger's JSON handler on stdout. A worker then applies Django's ``LOGGING`` when it loads the
app: the same configuration, with the log writer thread (svc_common.observability.log_writer).

Gunicorn's access log stays off (``ServiceLogger``): Django writes each request's one line
(svc_common.observability.access_log), and svc_common.server.gunicorn_errors the line of a request
gunicorn refuses before Django sees it.
"""

import importlib
from typing import Any

from gunicorn import glogging

from svc_common.observability import log_config
from svc_common.observability.log_config import build_logging_config


def name_the_service(app_uri: str | None) -> None:
    """Name the master's lines (and a worker's, until it loads the app) after the served project
    (``user_service.wsgi:application`` -> ``user_service.SERVICE_NAME``) without loading its
    settings: they import the database driver, which must come after gevent patches the worker."""
    module = (app_uri or "").split(":", 1)[0]
    if module.endswith(".wsgi"):
        project = importlib.import_module(module.removesuffix(".wsgi"))
        log_config.default_service_name = getattr(project, "SERVICE_NAME", log_config.default_service_name)


def gunicorn_logconfig_dict(level: str) -> dict[str, Any]:
    """The services' logging configuration, with gunicorn's loggers in it (``logconfig_dict``).

    Gunicorn merges this over its ``CONFIG_DEFAULTS`` one top-level key at a time, so the keys given
    here (``loggers``, ``handlers``, ``formatters``, ``root``) replace its defaults whole."""
    config = build_logging_config(level.upper())
    # The master writes its few lines itself, and so does a worker until it loads the app, whose
    # Django LOGGING (the same configuration) then puts the log writer thread in place. The writer is
    # for request-serving workers; in the master its metric would be a file of the master's own in
    # prometheus_client's multiprocess mode, in a directory that on_starting makes only later.
    config["handlers"] = {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
    }
    config["filters"] = {
        "one_line_per_refusal": {"()": "svc_common.server.gunicorn_errors.RefusalWarningFilter"},
    }
    config["loggers"] = {
        **config["loggers"],
        # No handler of its own: gunicorn's plain-text one for errorlog "-" is dropped, and its lines
        # reach the root's JSON handler. Its level stays gunicorn's (the loglevel setting).
        "gunicorn.error": {"handlers": [], "propagate": True, "filters": ["one_line_per_refusal"]},
    }
    return config


class ServiceLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn ships no type information
    """Gunicorn's Logger (``logger_class``), naming the service on its lines and without its access log.

    ``setup``, which runs before gunicorn's first line ("Starting gunicorn"), names the service
    (``name_the_service``); the handlers are the ones ``logconfig_dict`` configured.

    With ``logconfig_dict`` set, gunicorn turns its access log on (``Logger.access_log_enabled``) and
    builds the access line's fields for every request even when ``gunicorn.access`` writes nothing:
    about 30 microseconds a request, measured with timeit. The services log each request once, in
    Django (svc_common.observability.access_log), so this Logger's ``access`` does nothing."""

    def setup(self, cfg: Any) -> None:
        name_the_service(cfg.wsgi_app or cfg.default_proc_name)
        super().setup(cfg)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
